"""Complex Gaussian receiver noise, per coil, optionally correlated across coils.

Convention: σ is the standard deviation of the real part and of the imaginary part of each coil's
noise (so E|n|² = 2σ²). With a noise covariance Ψ (unit diagonal), the coil noise vector is
n = σ·L·w with L = chol(Ψ) and w standard complex Gaussian, so E[n nᴴ] = 2σ²Ψ.
Image-space and k-space noise are equivalent in distribution: the orthonormal FFT is unitary, so
white k-space noise of σ is white image noise of σ (`add_noise(..., domain='kspace')` does the
round trip explicitly).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mri_jax.physics.coils import loop_geometry
from mri_jax.physics.params import SimulationParams


def coil_covariance(params: SimulationParams) -> jax.Array:
  """Noise covariance Ψ = (1 − ρ)·I + ρ·exp(−|cᵢ − cⱼ|² / 2ℓ²), ℓ = loop diameter.

  Unit diagonal; positive definite for ρ in [0, 1) (a convex mix of I and a Gaussian kernel).
  Neighbouring, nearly touching loops get correlation ≈ ρ·e^(−1/2).

  Returns:
    (n_coils, n_coils) float32.
  """
  centres, _, _, a = loop_geometry(params)
  d2 = jnp.sum((centres[:, None, :] - centres[None, :, :]) ** 2, -1)
  kernel = jnp.exp(-d2 / (2 * (2 * a) ** 2))
  rho = params.noise_correlation
  return (1 - rho) * jnp.eye(params.n_coils) + rho * kernel


def complex_noise(key: jax.Array, shape: tuple[int, ...], sigma: jax.Array,
                  covariance: jax.Array | None = None) -> jax.Array:
  """Complex Gaussian noise with per-component σ, correlated along the leading (coil) axis.

  Args:
    key: PRNG key.
    shape: (C, *spatial).
    sigma: σ of each real/imaginary component (scalar or broadcastable).
    covariance: optional (C, C) Hermitian positive-definite Ψ with unit diagonal.

  Returns:
    complex64 array of `shape`.
  """
  kr, ki = jax.random.split(key)
  w = (jax.random.normal(kr, shape, jnp.float32)
       + 1j * jax.random.normal(ki, shape, jnp.float32)).astype(jnp.complex64)
  if covariance is not None:
    chol = jnp.linalg.cholesky(covariance).astype(jnp.complex64)
    w = jnp.tensordot(chol, w, axes=((1,), (0,)))
  return (sigma * w).astype(jnp.complex64)


def add_noise(key: jax.Array, coil_images: jax.Array, sigma: jax.Array,
              covariance: jax.Array | None = None, domain: str = "image") -> jax.Array:
  """Adds receiver noise to coil images (C, *spatial) in image space or in k-space.

  Args:
    key: PRNG key.
    coil_images: (C, *spatial) complex.
    sigma: per-component noise σ, in image units.
    covariance: optional coil noise covariance Ψ.
    domain: 'image' or 'kspace' (orthonormal FFT over the spatial axes).

  Returns:
    Noisy coil images, complex64, same shape.
  """
  noise = complex_noise(key, coil_images.shape, sigma, covariance)
  if domain == "image":
    return coil_images + noise
  if domain == "kspace":
    axes = tuple(range(1, coil_images.ndim))
    kspace = jnp.fft.fftn(coil_images, axes=axes, norm="ortho") + noise
    return jnp.fft.ifftn(kspace, axes=axes, norm="ortho").astype(jnp.complex64)
  raise ValueError(f"domain must be 'image' or 'kspace', got {domain!r}")
