"""Coil combination.

* `rss`: root-sum-of-squares. With m_c = s_c·ρ + n_c and independent noise of per-component σ,
  the magnitude follows a noncentral-χ distribution with 2N degrees of freedom and noncentrality
  ν = ρ·‖s‖ (one coil: Rician(ν, σ)).
* `roemer`: SNR-optimal combination with unit noise gain, (sᴴΨ⁻¹m) / sqrt(sᴴΨ⁻¹s). Its complex
  noise has per-component σ for any Ψ, so the magnitude is Rician(ρ·sqrt(sᴴΨ⁻¹s), σ).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _sq_abs(z: jax.Array) -> jax.Array:
  return jnp.real(z) ** 2 + jnp.imag(z) ** 2


def safe_sqrt(x: jax.Array) -> jax.Array:
  """sqrt(x) for x ≥ 0 whose gradient at 0 is 0 instead of NaN (zero signal without noise: the
  background of a noise-free simulation)."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def magnitude(z: jax.Array) -> jax.Array:
  """|z| of a complex image, differentiable at z = 0 (gradient 0 there)."""
  return safe_sqrt(_sq_abs(z))


def rss(coil_images: jax.Array, axis: int = 0) -> jax.Array:
  """Root-sum-of-squares over the coil axis (gradient 0, not NaN, where every coil is 0)."""
  return safe_sqrt(jnp.sum(_sq_abs(coil_images), axis=axis))


def _inv_cov_maps(maps: jax.Array, covariance: jax.Array | None) -> jax.Array:
  """Ψ⁻¹s per voxel (one small (C, C) inverse shared by every voxel); s itself when Ψ = I."""
  if covariance is None:
    return maps
  inv = jnp.linalg.inv(covariance).astype(maps.dtype)
  return jnp.tensordot(inv, maps, axes=((1,), (0,)))


def roemer_gain(maps: jax.Array, covariance: jax.Array | None = None) -> jax.Array:
  """sqrt(sᴴΨ⁻¹s): the receive field that `roemer` imprints on the magnitude image."""
  return _gain(_inv_cov_maps(maps, covariance), maps)


def _gain(weighted: jax.Array, maps: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.real(jnp.sum(jnp.conj(weighted) * maps, axis=0)))


def roemer(coil_images: jax.Array, maps: jax.Array, covariance: jax.Array | None = None) -> jax.Array:
  """Complex SNR-optimal (Roemer) combination with unit noise gain.

  Args:
    coil_images: (C, *spatial) complex.
    maps: (C, *spatial) complex sensitivities.
    covariance: optional (C, C) noise covariance Ψ; identity when None.

  Returns:
    (*spatial) complex; take `jnp.abs` for the magnitude image.
  """
  weighted = _inv_cov_maps(maps, covariance)
  num = jnp.sum(jnp.conj(weighted) * coil_images, axis=0)
  return num / _gain(weighted, maps)
