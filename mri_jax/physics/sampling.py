"""Random simulation parameters from ranges in a config (e.g. `configs/corruption.py`).

Every continuous parameter is drawn uniformly from a `(low, high)` range (a single number fixes
it), or log-uniformly when named in the config's `log_uniform`; static choices (coil count, rings,
models) are taken from the config as they are. `sample_params` is pure and jit/vmap-compatible for
a fixed config: vmap it over keys to get a batch of parameters.

Optional entries (the 'wide' variant uses them; configs without them draw exactly as before):
`poly_active_order` = (low, high) draws an integer order per example and zeroes the coefficients of
higher degree, so one compiled `poly_order` covers several orders; `p_no_noise` / `p_no_bias` are
the shares of examples drawn with σ = 0 / with no bias at all (no polynomial or transmit field and
a uniform receive field, γ = 0), so a model learns to leave clean images alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mri_jax.physics.bias import poly_exponents
from mri_jax.physics.params import SimulationParams, make_params, n_poly_terms

# Continuous parameters drawn from (low, high) ranges, scalar each.
_SCALAR_RANGES = ("noise_sigma", "coil_size", "coil_distance", "falloff_d0", "falloff_power",
                  "receive_strength", "slice_z", "b1_amplitude", "b1_width", "noise_correlation")


def _get(cfg: Any, name: str, default: Any) -> Any:
  if isinstance(cfg, Mapping):
    return cfg.get(name, default)
  return getattr(cfg, name, default)


def _bounds(value: float | Sequence[float]) -> tuple[float, float]:
  if isinstance(value, (int, float)):
    return float(value), float(value)
  low, high = (float(v) for v in value)
  if high < low:
    raise ValueError(f"range ({low}, {high}) has high < low")
  return low, high


def _uniform(key: jax.Array, value, shape=(), log: bool = False) -> jax.Array:
  low, high = _bounds(value)
  if log and low > 0:
    return jnp.exp(jax.random.uniform(key, shape, jnp.float32, jnp.log(low), jnp.log(high)))
  return jax.random.uniform(key, shape, jnp.float32, low, high)


def sample_params(key: jax.Array, cfg: Any) -> SimulationParams:
  """Draws one `SimulationParams` from the ranges in `cfg`.

  Args:
    key: PRNG key.
    cfg: ConfigDict or mapping with `n_coils`, `n_rings`, `coil_model`, `combine`, `noise_domain`,
      `poly_order`, `coarse_size` (static) and (low, high) ranges named like the parameters,
      plus `coil_jitter_azimuth`, `coil_jitter_z` (max |offset|), `poly_coefficient` (max |c|,
      TorchIO's `coefficients`), `b1_center` (max |offset| per axis). Missing entries take the
      defaults of `make_params`.

  Returns:
    `SimulationParams`; the geometry (rotation, jitter, phases) is always random.
  """
  static = dict(n_coils=int(_get(cfg, "n_coils", 8)), n_rings=int(_get(cfg, "n_rings", 1)),
                coil_model=_get(cfg, "coil_model", "biot_savart"), combine=_get(cfg, "combine", "rss"),
                noise_domain=_get(cfg, "noise_domain", "image"),
                poly_order=int(_get(cfg, "poly_order", 3)), coarse_size=int(_get(cfg, "coarse_size", 32)))
  base = make_params(**static)
  n = static["n_coils"]
  keys = iter(jax.random.split(key, len(_SCALAR_RANGES) + 6))
  values = {}
  log_names = tuple(_get(cfg, "log_uniform", ()) or ())
  for name in _SCALAR_RANGES:
    value = _get(cfg, name, None)
    k = next(keys)
    values[name] = getattr(base, name) if value is None else _uniform(k, value, log=name in log_names)
  jitter_az = float(_get(cfg, "coil_jitter_azimuth", 0.1))
  jitter_z = float(_get(cfg, "coil_jitter_z", 0.05))
  values["coil_rotation"] = _uniform(next(keys), (0.0, 2 * jnp.pi))
  values["coil_jitter"] = jnp.stack([_uniform(next(keys), (-jitter_az, jitter_az), (n,)),
                                     _uniform(next(keys), (-jitter_z, jitter_z), (n,))], -1)
  values["coil_phase"] = _uniform(next(keys), (-jnp.pi, jnp.pi), (n,))
  c = float(_get(cfg, "poly_coefficient", 0.0))
  values["poly_coefficients"] = _uniform(next(keys), (-c, c), (n_poly_terms(static["poly_order"]),))
  centre = float(_get(cfg, "b1_center", 0.1))
  values["b1_center"] = _uniform(next(keys), (-centre, centre), (3,))
  _optional_draws(jax.random.fold_in(key, 0x5EED), cfg, static["poly_order"], values)
  return base.replace(**values)


def _optional_draws(key: jax.Array, cfg: Any, poly_order: int, values: dict) -> None:
  """The optional entries of the module docstring, drawn from a separate key branch (in place)."""
  k_order, k_noise, k_bias = jax.random.split(key, 3)
  active = _get(cfg, "poly_active_order", None)
  if active is not None:
    low, high = (int(v) for v in active)
    order = jax.random.randint(k_order, (), low, high + 1)
    degree = jnp.asarray(poly_exponents(poly_order).sum(1))
    values["poly_coefficients"] = jnp.where(degree <= order, values["poly_coefficients"], 0.0)
  p_no_noise = float(_get(cfg, "p_no_noise", 0.0))
  if p_no_noise > 0:
    values["noise_sigma"] = jnp.where(jax.random.bernoulli(k_noise, p_no_noise), 0.0, values["noise_sigma"])
  p_no_bias = float(_get(cfg, "p_no_bias", 0.0))
  if p_no_bias > 0:
    flat = jax.random.bernoulli(k_bias, p_no_bias)
    for name in ("receive_strength", "b1_amplitude", "poly_coefficients"):
      values[name] = jnp.where(flat, 0.0, values[name])


def training_ranges(variant: str | None = None):
  """The default corruption ranges for training data, as an `ml_collections.ConfigDict`.

  `variant` = 'single_coil' gives the Rician (1-coil) variant. 'wide' gives the broad ranges of
  the mixed-anatomy data (issue 14): σ 0.5–10% of the image maximum (log-uniform), log-polynomial
  fields of order 0–5 with larger coefficients (log-field std up to ≈ 0.5), transmit amplitude up
  to 0.8, receive strength 0–1, coil correlation up to 0.6, a g-factor map (spatially varying
  noise, as with parallel imaging) on 30% of examples, and 10% each without noise / without
  bias. Its `coil_models` and `coil_counts` are the static choices the builder groups examples by
  (one compiled simulator each). `configs/corruption.py` returns this; the dataset builder uses
  it with the coil count chosen per example.
  """
  import ml_collections

  c = ml_collections.ConfigDict()
  c.n_coils = 8
  c.n_rings = 1
  c.coil_model = "biot_savart"
  c.combine = "rss"
  c.noise_domain = "image"
  c.poly_order = 3
  c.coarse_size = 32
  # σ per real/imaginary component, fraction of the reference intensity (image max, or mean WM).
  c.noise_sigma = (0.01, 0.08)
  c.coil_size = (0.85, 1.15)
  c.coil_distance = (1.0, 1.3)
  c.coil_jitter_azimuth = 0.1
  c.coil_jitter_z = 0.05
  c.falloff_d0 = (0.2, 0.5)
  c.falloff_power = (1.0, 2.0)
  c.receive_strength = (0.3, 1.0)
  c.slice_z = (-0.3, 0.3)
  c.b1_amplitude = (0.0, 0.4)
  c.b1_width = (0.4, 0.9)
  c.b1_center = 0.15
  c.poly_coefficient = 0.3
  c.noise_correlation = (0.0, 0.4)
  if variant == "single_coil":
    c.n_coils = 1
    c.noise_correlation = (0.0, 0.0)
  elif variant == "wide":
    c.noise_reference = "max"  # σ relative to the clean image maximum, not the mask mean
    c.noise_sigma = (0.005, 0.10)
    c.log_uniform = ("noise_sigma",)
    c.poly_order = 5
    c.poly_active_order = (0, 5)
    c.poly_coefficient = 0.5
    c.falloff_d0 = (0.1, 0.6)
    c.falloff_power = (1.0, 3.0)
    c.receive_strength = (0.0, 1.0)
    c.b1_amplitude = (0.0, 0.8)
    c.b1_width = (0.3, 1.0)
    c.b1_center = 0.3
    c.noise_correlation = (0.0, 0.6)
    c.gfactor = (0.2, 2.0)
    c.p_gfactor = 0.3
    c.p_no_noise = 0.1
    c.p_no_bias = 0.1
    c.coil_models = ("biot_savart", "falloff")
    c.coil_counts = (1, 2, 4, 8, 16, 32)
  elif variant not in (None, ""):
    raise ValueError(f"unknown corruption variant {variant!r} (known: single_coil, wide)")
  return c
