"""The simulator's parameters: one pytree, array leaves for everything continuous.

Continuous parameters are array leaves (so they can be traced, vmapped over and differentiated);
choices that change array shapes or code paths are static metadata (changing them re-traces).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

CoilModel = Literal["biot_savart", "falloff"]
Combine = Literal["rss", "roemer"]
NoiseDomain = Literal["image", "kspace"]

COIL_MODELS = ("biot_savart", "falloff")
COMBINES = ("rss", "roemer")
NOISE_DOMAINS = ("image", "kspace")
MAX_COILS = 64

_STATIC = ("n_coils", "n_rings", "coil_model", "combine", "noise_domain", "poly_order", "coarse_size")


def n_poly_terms(order: int) -> int:
  """Number of monomials x^i y^j z^k with i + j + k <= order (TorchIO's count, also in 2-D)."""
  return (order + 1) * (order + 2) * (order + 3) // 6


@dataclasses.dataclass(frozen=True)
class SimulationParams:
  """Everything `simulate` needs besides the key and the clean image.

  Geometry is in normalised units: the field of view spans [-1, 1] along its longest physical axis
  (see `mri_jax.physics.grid`). Intensities are relative.

  Attributes:
    noise_sigma: σ of the real and of the imaginary part of each coil's complex noise, as a
      fraction of the reference intensity (the clean image maximum, or the mean over a reference
      mask such as white matter, BrainWeb's convention). One coil ⇒ Rician(ν, σ) magnitude.
    coil_size: loop radius relative to the radius at which neighbouring loops of one ring touch
      (capped at half the ring radius); 1 ⇒ adjacent loops touch.
    coil_distance: radius of the cylinder the loops sit on.
    coil_rotation: azimuth of the first coil (radians).
    coil_jitter: (n_coils, 2) per-coil azimuth offset (radians) and z offset.
    coil_phase: (n_coils,) per-coil phase offset (radians) of the complex sensitivity.
    falloff_d0: d0 of the distance falloff model s(d) ∝ (d + d0)^-p.
    falloff_power: p of that model.
    receive_strength: γ in [0, 1]; the coil maps are rescaled so their root-sum-of-squares is
      rss^γ (γ = 1: the raw physical receive field; γ = 0: uniform, like prescan normalisation).
    slice_z: through-plane position of a 2-D slice (ignored for 3-D volumes).
    b1_amplitude: transmit (B1+) inhomogeneity amplitude; the field is 1 + A·(g − 1/2) with g a
      Gaussian bump, so it lies in [1 − A/2, 1 + A/2]. Positive A ⇒ central brightening.
    b1_center: (3,) centre of the bump.
    b1_width: width (standard deviation) of the bump.
    poly_coefficients: (n_poly_terms(poly_order),) coefficients of the log-polynomial field in
      TorchIO's monomial order (x outermost, z innermost, total degree ≤ order).
    noise_correlation: ρ in [0, 1); noise covariance Ψ = (1 − ρ)·I + ρ·K with K a Gaussian kernel
      of the distances between coil centres (length = loop diameter). 0 ⇒ independent coils.
    n_coils: number of receive coils (static, 1–64).
    n_rings: rings of loops along z (static, must divide n_coils).
    coil_model: 'biot_savart' (loop field by the Biot–Savart law) or 'falloff' (static).
    combine: 'rss' (root-sum-of-squares) or 'roemer' (SNR-optimal, unit noise gain) (static).
    noise_domain: 'image' or 'kspace' (noise added to each coil's orthonormal FFT) (static).
    poly_order: order of the log-polynomial field (static).
    coarse_size: coil and transmit fields are evaluated on a grid of at most this many points per
      axis, then upsampled with a cubic kernel (static; the fields are smooth).
  """

  noise_sigma: jax.Array
  coil_size: jax.Array
  coil_distance: jax.Array
  coil_rotation: jax.Array
  coil_jitter: jax.Array
  coil_phase: jax.Array
  falloff_d0: jax.Array
  falloff_power: jax.Array
  receive_strength: jax.Array
  slice_z: jax.Array
  b1_amplitude: jax.Array
  b1_center: jax.Array
  b1_width: jax.Array
  poly_coefficients: jax.Array
  noise_correlation: jax.Array
  n_coils: int = 8
  n_rings: int = 1
  coil_model: CoilModel = "biot_savart"
  combine: Combine = "rss"
  noise_domain: NoiseDomain = "image"
  poly_order: int = 3
  coarse_size: int = 32

  def replace(self, **changes) -> "SimulationParams":
    return dataclasses.replace(self, **changes)

  def validate(self) -> "SimulationParams":
    """Checks the static choices (Python values); raises ValueError with a clear message."""
    if not isinstance(self.n_coils, int) or not 1 <= self.n_coils <= MAX_COILS:
      raise ValueError(f"n_coils must be an integer in [1, {MAX_COILS}], got {self.n_coils!r}")
    if not isinstance(self.n_rings, int) or self.n_rings < 1 or self.n_coils % self.n_rings:
      raise ValueError(f"n_rings ({self.n_rings!r}) must be a positive divisor of n_coils ({self.n_coils})")
    for name, allowed in (("coil_model", COIL_MODELS), ("combine", COMBINES),
                          ("noise_domain", NOISE_DOMAINS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
    if not isinstance(self.poly_order, int) or not 0 <= self.poly_order <= 6:
      raise ValueError(f"poly_order must be an integer in [0, 6], got {self.poly_order!r}")
    if not isinstance(self.coarse_size, int) or self.coarse_size < 4:
      raise ValueError(f"coarse_size must be an integer >= 4, got {self.coarse_size!r}")
    return self


jax.tree_util.register_dataclass(
    SimulationParams,
    data_fields=[f.name for f in dataclasses.fields(SimulationParams) if f.name not in _STATIC],
    meta_fields=list(_STATIC))


def make_params(n_coils: int = 8, *, n_rings: int = 1, coil_model: CoilModel = "biot_savart",
                combine: Combine = "rss", noise_domain: NoiseDomain = "image", poly_order: int = 3,
                coarse_size: int = 32, **values) -> SimulationParams:
  """Builds parameters with sensible fixed defaults; any continuous field can be overridden.

  Defaults: σ = 0.03 of the maximum, loops touching on a cylinder of radius 1.1, γ = 1, a 10%
  central-brightening transmit field, no polynomial field, independent coils.

  Example:
    >>> p = make_params(8, noise_sigma=0.05, b1_amplitude=0.2)
  """
  defaults = dict(
      noise_sigma=0.03, coil_size=1.0, coil_distance=1.1, coil_rotation=0.0,
      coil_jitter=np.zeros((n_coils, 2)), coil_phase=np.zeros((n_coils,)),
      falloff_d0=0.3, falloff_power=1.5, receive_strength=1.0, slice_z=0.0,
      b1_amplitude=0.1, b1_center=np.zeros((3,)), b1_width=0.6,
      poly_coefficients=np.zeros((n_poly_terms(poly_order),)), noise_correlation=0.0)
  unknown = set(values) - set(defaults)
  if unknown:
    raise TypeError(f"unknown simulation parameter(s): {sorted(unknown)}")
  defaults.update(values)
  arrays = {k: jnp.asarray(v, jnp.float32) for k, v in defaults.items()}
  params = SimulationParams(**arrays, n_coils=n_coils, n_rings=n_rings, coil_model=coil_model,
                            combine=combine, noise_domain=noise_domain, poly_order=poly_order,
                            coarse_size=coarse_size).validate()
  expected = {"coil_jitter": (n_coils, 2), "coil_phase": (n_coils,), "b1_center": (3,),
              "poly_coefficients": (n_poly_terms(poly_order),)}
  for name, shape in expected.items():
    if getattr(params, name).shape != shape:
      raise ValueError(f"{name} must have shape {shape}, got {getattr(params, name).shape}")
  return params
