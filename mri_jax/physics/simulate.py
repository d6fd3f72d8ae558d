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
from mri_jax.physics import coils, combine, noise
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
             return_coil_maps: bool = False) -> Corrupted:
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

  maps = coils.coil_maps(shape, params, spacing)  # (C, *shape)
  transmit = bias_lib.transmit_field(shape, params, spacing)
  polynomial = bias_lib.polynomial_field(params.poly_coefficients, shape, params.poly_order)
  signal = clean * transmit * polynomial

  sigma = params.noise_sigma * reference_intensity(clean, reference_mask)
  covariance = None
  if params.n_coils > 1:
    covariance = noise.coil_covariance(params)
  coil_images = noise.add_noise(key, maps * signal, sigma, covariance, params.noise_domain)

  if params.combine == "rss":
    image = combine.rss(coil_images)
    receive = bias_lib.receive_field(maps)
  else:
    image = combine.magnitude(combine.roemer(coil_images, maps, covariance))
    receive = combine.roemer_gain(maps, covariance)
  return Corrupted(image=image, bias=transmit * polynomial * receive, receive=receive,
                   transmit=transmit, polynomial=polynomial, noise_sigma=sigma,
                   coil_maps=maps if return_coil_maps else None)
