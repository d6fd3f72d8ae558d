"""The composed receive chain: clean magnetisation → corrupted magnitude image.

    coil_c = s_c · (ρ · B1 · P) + n_c,      image = |combine(coil_1..N)|

with s_c the coil maps (`coils.coil_maps`), B1 the transmit field, P the optional log-polynomial
field, n_c complex Gaussian noise (σ relative to a reference intensity, optionally correlated) and
the combination RSS or Roemer. The multiplicative bias the image carries is therefore
bias = B1 · P · R, with R = rss(s) (RSS) or sqrt(sᴴΨ⁻¹s) (Roemer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mri_jax.physics import bias as bias_lib
from mri_jax.physics import coils, combine, grid, noise
from mri_jax.physics.params import SimulationParams, n_poly_terms


class Corrupted(NamedTuple):
  """Output of `simulate` (all spatial arrays have the clean image's shape).

  Attributes:
    image: corrupted magnitude image, float32.
    bias: total multiplicative field transmit · polynomial · receive (the "true bias field").
    receive: receive field imprinted by the coil combination.
    transmit: transmit (B1+) field.
    polynomial: log-polynomial field (≡ 1 when all coefficients are 0).
    noise_sigma: absolute per-component noise σ (noise_sigma × reference intensity).
    coil_maps: (C, *shape) complex maps, or None unless `return_coil_maps=True`.
  """

  image: jax.Array
  bias: jax.Array
  receive: jax.Array
  transmit: jax.Array
  polynomial: jax.Array
  noise_sigma: jax.Array
  coil_maps: jax.Array | None


def reference_intensity(clean: jax.Array, reference_mask: jax.Array | None = None) -> jax.Array:
  """The intensity σ is relative to: max(clean), or mean(clean) inside a mask (e.g. white matter)."""
  if reference_mask is None:
    return jnp.max(clean)
  mask = reference_mask.astype(clean.dtype)
  return jnp.sum(clean * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def simulate(key: jax.Array, clean: jax.Array, params: SimulationParams, *,
             spacing: Sequence[float] | None = None, reference_mask: jax.Array | None = None,
             noise_map: jax.Array | None = None, return_coil_maps: bool = False) -> Corrupted:
  """Corrupts a clean magnitude image with coil sensitivities, bias fields and receiver noise.

  Pure and jit/vmap/grad-compatible: `shape`, `spacing`, `return_coil_maps` and the static fields
  of `params` are trace-time constants; everything else may be traced.

  Args:
    key: typed PRNG key (`jax.random.key`); the only source of randomness (the coil geometry is
      in `params`, see `sample_params`).
    clean: (X, Y) or (X, Y, Z) real image (true magnetisation; z is the bore axis).
    params: `SimulationParams`.
    spacing: voxel size per axis (e.g. from the NIfTI header).
    reference_mask: optional mask whose mean clean intensity σ is relative to (BrainWeb uses the
      brightest tissue); default: the clean image maximum.
    noise_map: optional map of the clean image's shape scaling σ per voxel (e.g. a g-factor map,
      `noise.gfactor_map`); image-domain noise only. `noise_sigma` in the output stays the base σ.
    return_coil_maps: include the (C, *shape) complex maps in the output (large in 3-D).

  Returns:
    `Corrupted`.

  Example:
    >>> key = jax.random.key(0)
    >>> out = jax.jit(simulate)(key, clean, make_params(8, noise_sigma=0.05))
  """
  if clean.ndim not in (2, 3):
    raise ValueError(f"clean must be 2-D or 3-D, got shape {clean.shape}")
  if params.poly_coefficients.shape != (n_poly_terms(params.poly_order),):
    raise ValueError("poly_coefficients does not match poly_order")
  clean = jnp.asarray(clean, jnp.float32)
  shape = clean.shape

  coarse_maps = coils.coarse_coil_maps(shape, params, spacing)  # (C, *coarse)
  transmit = bias_lib.transmit_field(shape, params, spacing)
  polynomial = bias_lib.polynomial_field(params.poly_coefficients, shape, params.poly_order)
  signal = clean * transmit * polynomial

  sigma = params.noise_sigma * reference_intensity(clean, reference_mask)
  covariance = noise.coil_covariance(params) if params.n_coils > 1 else None
  if noise_map is not None:
    if params.noise_domain != "image":
      raise ValueError("noise_map needs noise_domain='image'")
    sigma_used = sigma * jnp.asarray(noise_map, jnp.float32)
  else:
    sigma_used = sigma
  if params.noise_domain == "kspace":
    image, receive = _materialised_chain(key, coarse_maps, signal, sigma_used, covariance, params)
  elif params.combine == "roemer":
    image, receive = _fused_chain(key, coarse_maps, signal, sigma_used, covariance, "roemer")
  elif covariance is None:
    image, receive = _fused_chain(key, coarse_maps, signal, sigma_used, None, "rss")
  else:  # RSS mixes the coils' noise voxel by voxel: only independent coils take the fused path
    image, receive = jax.lax.cond(
        params.noise_correlation == 0,
        lambda: _fused_chain(key, coarse_maps, signal, sigma_used, None, "rss"),
        lambda: _materialised_chain(key, coarse_maps, signal, sigma_used, covariance, params))
  return Corrupted(image=image, bias=transmit * polynomial * receive, receive=receive,
                   transmit=transmit, polynomial=polynomial, noise_sigma=sigma,
                   coil_maps=grid.upsample(coarse_maps, shape) if return_coil_maps else None)


def _materialised_chain(key, coarse_maps, signal, sigma, covariance, params):
  """All coil images at once (k-space noise, and RSS with correlated coil noise)."""
  maps = grid.upsample(coarse_maps, signal.shape)
  coil_images = noise.add_noise(key, maps * signal, sigma, covariance, params.noise_domain)
  if params.combine == "rss":
    return combine.rss(coil_images), bias_lib.receive_field(maps)
  return (combine.magnitude(combine.roemer(coil_images, maps, covariance)),
          combine.roemer_gain(maps, covariance))


def _fused_chain(key, coarse_maps, signal, sigma, covariance, mode):
  """Coil images one coil at a time, never all in memory: upsampled map, noise and combination
  fused per coil (what makes the simulator fast on CPU; see benchmarks/RESULTS.md).

  Same noise draws as `_materialised_chain` (per-coil keys of `noise.coil_keys`). Roemer with a
  noise covariance Ψ = LLᴴ runs on the whitened maps s̃ = L⁻¹s: sᴴΨ⁻¹(s·ρ + L·w) = s̃ᴴ(s̃·ρ + w),
  so the coils' noise w is independent there too, and the gain is ‖s̃‖ = sqrt(sᴴΨ⁻¹s).
  """
  shape = signal.shape
  if covariance is not None:
    chol = jnp.linalg.cholesky(covariance).astype(coarse_maps.dtype)
    coarse_maps = jax.scipy.linalg.solve_triangular(chol, coarse_maps.reshape(len(chol), -1),
                                                    lower=True).reshape(coarse_maps.shape)
  # (C, 2, x_coarse, *shape[1:]): real/imaginary parts upsampled along all but the first axis.
  partial = grid.upsample_trailing(jnp.stack([jnp.real(coarse_maps), jnp.imag(coarse_maps)], 1),
                                   shape)
  keys = noise.coil_keys(key, coarse_maps.shape[0])
  zeros = jnp.zeros(shape, jnp.float32)

  def one_coil(carry, xs):
    key_data, part = xs
    m_re, m_im = grid.upsample_axis(part, 1, shape[0])  # this coil's map
    n_re, n_im = noise.coil_standard_noise(key_data, shape)
    re = m_re * signal + sigma * n_re
    im = m_im * signal + sigma * n_im
    gain2 = carry[-1] + m_re * m_re + m_im * m_im
    if mode == "rss":
      return (carry[0] + re * re + im * im, gain2), None
    # Roemer: accumulate conj(s̃)·(coil image).
    return (carry[0] + m_re * re + m_im * im, carry[1] + m_re * im - m_im * re, gain2), None

  init = (zeros, zeros) if mode == "rss" else (zeros, zeros, zeros)
  out, _ = jax.lax.scan(one_coil, init, (keys, partial))
  gain = combine.safe_sqrt(out[-1])
  if mode == "rss":
    return combine.safe_sqrt(out[0]), gain
  return combine.safe_sqrt(out[0] ** 2 + out[1] ** 2) / gain, gain
