"""Complex Gaussian receiver noise, per coil, optionally correlated across coils.

Convention: σ is the standard deviation of the real part and of the imaginary part of each coil's
noise (so E|n|² = 2σ²). With a noise covariance Ψ (unit diagonal), the coil noise vector is
n = σ·L·w with L = chol(Ψ) and w standard complex Gaussian, so E[n nᴴ] = 2σ²Ψ.
Image-space and k-space noise are equivalent in distribution: the orthonormal FFT is unitary, so
white k-space noise of σ is white image noise of σ (`add_noise(..., domain='kspace')` does the
round trip explicitly).

Generator (speed, measured in benchmarks/RESULTS.md): the caller's key, of any PRNG
implementation, seeds one `threefry4x32` key per coil (JAX's own counter-based generator, whose
CPU lowering is several times faster than the default `threefry2x32`'s); each 32-bit word then
gives one complex sample: its two 16-bit halves index a table of the 65,536 equal-probability
bins of the standard normal, each holding the bin's conditional mean. The draws therefore have
exactly mean 0, variance 1 − 1.5·10⁻⁶, and every bin the exact probability 2⁻¹⁶; only the
resolution is finite (spacing 3.8·10⁻⁵ at 0; the 2 × 2⁻¹⁶ of mass beyond |z| = 4.17 sits at
|z| = 4.39). `tests/physics/test_noise_statistics.py` checks the Rician and noncentral-χ moments
this produces against their closed forms, and the table against the normal distribution.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from mri_jax.physics import grid
from mri_jax.physics.coils import loop_geometry
from mri_jax.physics.params import SimulationParams

# PRNG implementation of the per-coil noise keys (public in jax.random since JAX 0.10).
NOISE_PRNG = "threefry4x32"
TABLE_BITS = 16


@functools.lru_cache(maxsize=1)
def normal_table() -> np.ndarray:
  """(2¹⁶,) float32: the conditional mean of the standard normal in each equal-probability bin."""
  n = 1 << TABLE_BITS
  edges = special.ndtri(np.arange(n + 1, dtype=np.float64) / n)  # ±inf at the ends
  density = np.exp(-0.5 * edges**2) / np.sqrt(2 * np.pi)  # 0 at ±inf
  return ((density[:-1] - density[1:]) * n).astype(np.float32)


def table_normals(words: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Two standard-normal draws per uint32 word (its high and low 16-bit halves), float32."""
  table = jnp.asarray(normal_table())
  return (table[(words >> TABLE_BITS).astype(jnp.int32)],
          table[(words & jnp.uint32((1 << TABLE_BITS) - 1)).astype(jnp.int32)])


def coil_keys(key: jax.Array, n_coils: int) -> jax.Array:
  """Raw data (n_coils, 4) uint32 of the per-coil `NOISE_PRNG` keys derived from `key`.

  Kept as raw data behind an optimisation barrier so that XLA computes them once instead of
  folding the key derivation into every voxel of the fused noise loop.
  """
  seed = jax.random.bits(key, (4,), jnp.uint32)
  keys = jax.random.split(jax.random.wrap_key_data(seed, impl=NOISE_PRNG), n_coils)
  return jax.lax.optimization_barrier(jax.random.key_data(keys))


def coil_standard_noise(key_data: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """Real and imaginary parts (each N(0, 1), float32, `shape`) of one coil's noise."""
  words = jax.random.bits(jax.random.wrap_key_data(key_data, impl=NOISE_PRNG), shape, jnp.uint32)
  return table_normals(words)


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
  keys = coil_keys(key, shape[0])
  re, im = jax.vmap(lambda k: coil_standard_noise(k, tuple(shape[1:])))(keys)
  w = jax.lax.complex(re, im)
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


def gfactor_map(key: jax.Array, shape: tuple[int, ...], amplitude: jax.Array) -> jax.Array:
  """A parallel-imaging-like g-factor map g ≥ 1: noise σ becomes σ·g(x) (spatially varying).

  SENSE unfolding amplifies noise most where aliased copies overlap, typically a band through
  the centre along the phase-encoding direction: g = 1 + A·b(x)·(0.6 + 0.4·h(x)), with b a
  Gaussian band (random direction, centre and width) and h a smooth random modulation in [0, 1].

  Args:
    key: PRNG key.
    shape: spatial shape (2-D or 3-D).
    amplitude: A ≥ 0 (may be traced); 0 gives g ≡ 1.

  Returns:
    float32 map of `shape`, ≥ 1.
  """
  k_dir, k_off, k_width, k_mod = jax.random.split(key, 4)
  axes = grid.normalized_axes(shape)
  pts = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), -1)  # (*shape, ndim)
  direction = jax.random.normal(k_dir, (len(shape),))
  direction = direction / jnp.maximum(jnp.linalg.norm(direction), 1e-6)
  offset = jax.random.uniform(k_off, (), minval=-0.3, maxval=0.3)
  width = jax.random.uniform(k_width, (), minval=0.2, maxval=0.6)
  band = jnp.exp(-((pts @ direction - offset) ** 2) / (2 * width ** 2))
  lattice = tuple(min(int(n), 4) for n in shape)
  mod = grid.upsample(jax.random.uniform(k_mod, lattice), tuple(shape))
  return 1.0 + amplitude * band * (0.6 + 0.4 * jnp.clip(mod, 0.0, 1.0))
