"""Masked image-quality metrics in JAX: SSIM, PSNR (jit/vmap-able, per image).

Conventions (as `mri-jax evaluate` reports them): images are compared inside a foreground mask
after dividing each by its mean inside that mask; the data range is the reference's maximum in
the mask after that normalisation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> np.ndarray:
  x = np.arange(size) - (size - 1) / 2
  w = np.exp(-x ** 2 / (2 * sigma ** 2))
  return (w / w.sum()).astype(np.float32)


def _blur(x: jax.Array, w: jax.Array) -> jax.Array:
  """Separable 'same' Gaussian blur of a 2-D image (edge-replicated)."""
  r = len(w) // 2
  xp = jnp.pad(x, r, mode="edge")
  x = sum(w[i] * xp[i:i + x.shape[0], r:r + x.shape[1]] for i in range(len(w)))  # along axis 0
  xp = jnp.pad(x, ((0, 0), (r, r)), mode="edge")
  return sum(w[i] * xp[:, i:i + x.shape[1]] for i in range(len(w)))


def normalise(x: jax.Array, mask: jax.Array) -> jax.Array:
  """x divided by its mean inside the mask (of |x|, which is the same for magnitude images and keeps
  the scale finite for a network output whose foreground mean is ≤ 0, e.g. early in training)."""
  m = mask.astype(x.dtype)
  return x / jnp.maximum(jnp.sum(jnp.abs(x) * m) / jnp.maximum(jnp.sum(m), 1.0), 1e-8)


def ssim(x: jax.Array, ref: jax.Array, mask: jax.Array, data_range: jax.Array | float | None = None,
         *, window: int = 7, sigma: float = 1.5) -> jax.Array:
  """Mean structural similarity of 2-D `x` against `ref` over `mask` (Wang et al. 2004)."""
  m = mask.astype(jnp.float32)
  if data_range is None:
    data_range = jnp.max(jnp.where(mask, ref, -jnp.inf)) - jnp.min(jnp.where(mask, ref, jnp.inf))
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  w = jnp.asarray(_gaussian_window(window, sigma))
  mx, my = _blur(x, w), _blur(ref, w)
  vx = _blur(x * x, w) - mx ** 2
  vy = _blur(ref * ref, w) - my ** 2
  cxy = _blur(x * ref, w) - mx * my
  s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
  return jnp.sum(s * m) / jnp.maximum(jnp.sum(m), 1.0)


def psnr(x: jax.Array, ref: jax.Array, mask: jax.Array, data_range: jax.Array | float | None = None) -> jax.Array:
  """Peak signal-to-noise ratio (dB) inside `mask`."""
  m = mask.astype(jnp.float32)
  if data_range is None:
    data_range = jnp.max(jnp.where(mask, ref, -jnp.inf))
  mse = jnp.sum((x - ref) ** 2 * m) / jnp.maximum(jnp.sum(m), 1.0)
  return 10.0 * jnp.log10(data_range ** 2 / jnp.maximum(mse, 1e-12))


def masked_scores(x: jax.Array, ref: jax.Array, mask: jax.Array) -> dict:
  """SSIM and PSNR after normalising both images by their foreground means (one 2-D image)."""
  xn, rn = normalise(x, mask), normalise(ref, mask)
  rng = jnp.max(jnp.where(mask, rn, -jnp.inf))
  return {"ssim": ssim(xn, rn, mask, rng), "psnr": psnr(xn, rn, mask, rng)}
