"""N4 bias-field correction in JAX (Tustison et al., IEEE TMI 2010), jit-, vmap- and grad-able.

The algorithm, in the log domain on a shrunk copy of the image:

1. v = log I inside the mask; the log field f starts at 0.
2. Repeat (fixed maximum per level, frozen once converged so shapes and trip counts are static):
   sharpen the histogram of u = v − f by Wiener deconvolution with a Gaussian (FWHM in log
   units), map every voxel to its expected true intensity E[u_true | u], and fit the residual
   u − E[u_true | u] with a cubic B-spline (`bspline.Basis.fit`); add that to the control lattice.
   A level stops when the coefficient of variation of exp(Δf) inside the mask is below the
   threshold.
3. Double the B-spline spans (exact lattice refinement) and repeat for the next level.
4. Evaluate the lattice at full resolution: corrected = I / exp(f).

Everything is dense array work (histogram by scatter-add, FFTs of a few hundred bins, separable
B-spline contractions), so one compiled program runs a whole image, and `jax.vmap` a batch.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mri_jax.n4 import bspline
from mri_jax.n4.settings import N4Settings, Plan, plan as make_plan

_TINY = 1e-12


class N4Result(NamedTuple):
  """N4 output at full resolution.

  Attributes:
    corrected: image / exp(log_field) (voxels outside the mask are corrected too).
    log_field: the estimated log bias field, so image ≈ corrected · exp(log_field).
    mask: the voxels N4 used (given mask or Otsu, minus non-positive voxels).
    iterations: iterations run per level (int array, one entry per level).
  """

  corrected: jax.Array
  log_field: jax.Array
  mask: jax.Array
  iterations: jax.Array


def otsu_threshold(image: jax.Array, bins: int = 256) -> jax.Array:
  """Otsu's threshold (maximum between-class variance) of a histogram with `bins` bins."""
  lo, hi = jnp.min(image), jnp.max(image)
  width = jnp.maximum(hi - lo, _TINY) / bins
  idx = jnp.clip(jnp.floor((image - lo) / width).astype(jnp.int32), 0, bins - 1)
  hist = jnp.zeros(bins, jnp.float32).at[idx.ravel()].add(1.0)
  p = hist / jnp.sum(hist)
  centres = lo + (jnp.arange(bins) + 0.5) * width
  omega = jnp.cumsum(p)
  mu = jnp.cumsum(p * centres)
  between = (mu[-1] * omega - mu) ** 2 / jnp.maximum(omega * (1.0 - omega), _TINY)
  k = jnp.argmax(jnp.where((omega > 0) & (omega < 1), between, -1.0))
  return lo + (k + 1) * width


def otsu_mask(image: jax.Array, settings: N4Settings = N4Settings()) -> jax.Array:
  """The foreground mask N4 uses by default: voxels above Otsu's threshold of the shrunk image."""
  from mri_jax import compile_cache

  image = jnp.asarray(image, jnp.float32)
  p = make_plan(image.shape, settings)
  return compile_cache.cached_call(f"otsu-{p}", lambda i: _otsu_jit(i, p), image)


def _otsu_shrunk(image, p):
  return image > otsu_threshold(_shrink(image, p))


_otsu_jit = jax.jit(_otsu_shrunk, static_argnames="p")


def _masked_minmax(x, w):
  big = jnp.asarray(jnp.finfo(x.dtype).max, x.dtype)
  return jnp.min(jnp.where(w > 0, x, big)), jnp.max(jnp.where(w > 0, x, -big))


def sharpen(u: jax.Array, w: jax.Array, *, bins: int, fwhm: float, wiener: float) -> jax.Array:
  """Expected true log intensity E[u_true | u] of every voxel (N4's histogram sharpening).

  Args:
    u: log intensities (any shape).
    w: mask weights (0/1) of the same shape; only these voxels enter the histogram.
    bins, fwhm, wiener: see `N4Settings`.
  """
  lo, hi = _masked_minmax(u, w)
  slope = jnp.maximum((hi - lo) / (bins - 1), 1e-8)
  c = jnp.clip((u - lo) / slope, 0.0, bins - 1.0)
  i = jnp.clip(jnp.floor(c), 0, bins - 2)
  off = c - i
  i = jax.lax.stop_gradient(i).astype(jnp.int32)
  # Linear splatting to bins i and i + 1 as one scatter of (weight to i, weight to i + 1) pairs.
  pairs = jnp.zeros((bins, 2), u.dtype).at[i.ravel()].add(
      jnp.stack([(w * (1.0 - off)).ravel(), (w * off).ravel()], axis=-1))
  hist = pairs[:, 0] + jnp.concatenate([jnp.zeros(1, u.dtype), pairs[:-1, 1]])
  padded = 2 ** (math.ceil(math.log2(bins)) + 1)
  offset = (padded - bins) // 2
  v = jnp.zeros(padded, u.dtype).at[offset:offset + bins].set(hist)
  n = jnp.arange(padded)
  dist = jnp.minimum(n, padded - n).astype(u.dtype)
  scaled = fwhm / slope  # FWHM in bins
  kernel = (2.0 * math.sqrt(math.log(2.0) / math.pi) / scaled) * jnp.exp(
      -dist ** 2 * (4.0 * math.log(2.0)) / scaled ** 2)
  kf = jnp.fft.rfft(kernel).real  # the kernel is real and symmetric: its transform is real
  deconv = jnp.fft.irfft(jnp.fft.rfft(v) * kf / (kf * kf + wiener), padded)
  deconv = jnp.maximum(deconv, 0.0)
  centres = lo + (n - offset).astype(u.dtype) * slope
  num = jnp.fft.irfft(jnp.fft.rfft(centres * deconv) * kf, padded)
  den = jnp.fft.irfft(jnp.fft.rfft(deconv) * kf, padded)
  expected = jnp.where(jnp.abs(den) > _TINY, num / jnp.where(jnp.abs(den) > _TINY, den, 1.0), 0.0)
  e = expected[offset:offset + bins]
  table = jnp.stack([e[:-1], e[1:] - e[:-1]], axis=-1)  # value and slope per bin: one gather
  row = table[i]
  return row[..., 0] + row[..., 1] * off


def _shrink(x: jax.Array, p: Plan) -> jax.Array:
  """Subsamples x at the voxels nearest the shrunk block centres (as ITK's ShrinkImageFilter)."""
  for axis, idx in enumerate(p.shrunk_indices()):
    x = jnp.take(x, jnp.asarray(idx), axis=axis)
  return x


def _core(image: jax.Array, mask: jax.Array, p: Plan, s: N4Settings) -> N4Result:
  image = jnp.asarray(image, jnp.float32)
  valid = mask & (image > 0)
  shrunk = _shrink(image, p)
  w = _shrink(valid, p).astype(jnp.float32)
  v = jnp.where(w > 0, jnp.log(jnp.maximum(shrunk, _TINY)), 0.0)
  n_in = jnp.maximum(jnp.sum(w), 1.0)

  positions = p.shrunk_positions()
  lattice = jnp.zeros(p.control_points_at(0), jnp.float32)
  field = jnp.zeros(p.shrunk_shape, jnp.float32)
  done_iters = []
  for level, n_iter in enumerate(p.iterations):
    if level > 0:
      lattice = bspline.refine(lattice, p.shape, p.control_points_at(level))
    basis = bspline.Basis(positions, p.shape, p.control_points_at(level))
    den = basis.denominator(w)

    def step(carry, _, basis=basis, den=den):
      lat, fld, done, count = carry
      u = v - fld
      residual = (u - sharpen(u, w, bins=s.bins, fwhm=s.fwhm, wiener=s.wiener)) * w
      new_lat = lat + basis.fit(residual, w, den)
      new_fld = basis.evaluate(new_lat)
      ratio = jnp.exp(new_fld - fld)
      mean = jnp.sum(ratio * w) / n_in
      std = jnp.sqrt(jnp.maximum(jnp.sum((ratio - mean) ** 2 * w) / n_in, 0.0))
      cv = std / jnp.maximum(mean, _TINY)
      lat = jnp.where(done, lat, new_lat)
      fld = jnp.where(done, fld, new_fld)
      count = count + jnp.where(done, 0, 1)
      done = done | (cv < s.convergence)
      return (lat, fld, done, count), None

    if n_iter > 0:
      (lattice, field, _, count), _ = jax.lax.scan(
          step, (lattice, field, jnp.asarray(False), jnp.asarray(0, jnp.int32)), None, length=n_iter)
    else:
      count = jnp.asarray(0, jnp.int32)
    done_iters.append(count)

  log_field = bspline.evaluate_on(lattice, p.full_positions(), p.shape)
  return N4Result(corrected=image / jnp.exp(log_field), log_field=log_field,
                  mask=valid, iterations=jnp.stack(done_iters))


def _with_mask(image, mask, p, settings):
  image = jnp.asarray(image, jnp.float32)
  if mask is None:  # Otsu's threshold of the shrunk image (cheap), applied at full resolution
    mask = _otsu_shrunk(image, p)
  return _core(image, mask, p, settings)


@functools.partial(jax.jit, static_argnames=("p", "settings"))
def _n4_jit(image, mask, p, settings):
  return _with_mask(image, mask, p, settings)


@functools.partial(jax.jit, static_argnames=("p", "settings"))
def _n4_batch_jit(images, masks, p, settings):
  if masks is None:
    return jax.vmap(lambda i: _with_mask(i, None, p, settings))(images)
  return jax.vmap(lambda i, m: _with_mask(i, m, p, settings))(images, masks)


def n4(image, mask=None, *, spacing=None, settings: N4Settings = N4Settings()) -> N4Result:
  """N4 bias-field correction of one 2-D or 3-D image (compiled once per shape and settings).

  Composable: inside your own `jax.jit`/`jax.grad` call `n4_traced` with a `Plan` instead.

  Args:
    image: (X, Y) or (X, Y, Z) intensities; voxels ≤ 0 are left out of the fit (and corrected
      like the others).
    mask: boolean foreground of the same shape, or None for Otsu's mask (threshold computed on
      the shrunk image).
    spacing: voxel size per axis; used only with `settings.spline_distance`.
    settings: `N4Settings`.
  """
  image = jnp.asarray(image, jnp.float32)
  p = make_plan(image.shape, settings, spacing)
  mask = None if mask is None else jnp.asarray(mask, bool)
  if mask is not None and mask.shape != image.shape:
    raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
  return _cached(_n4_jit, "n4", image, mask, p, settings)


def n4_batch(images, masks=None, *, spacing=None, settings: N4Settings = N4Settings()) -> N4Result:
  """N4 of a batch of same-shape images (leading batch axis), vmapped in one compiled program."""
  images = jnp.asarray(images, jnp.float32)
  p = make_plan(images.shape[1:], settings, spacing)
  masks = None if masks is None else jnp.asarray(masks, bool)
  if masks is not None and masks.shape != images.shape:
    raise ValueError(f"masks shape {masks.shape} differs from images shape {images.shape}")
  return _cached(_n4_batch_jit, "n4_batch", images, masks, p, settings)


def _cached(jitted, name: str, images, masks, p: Plan, settings: N4Settings) -> N4Result:
  """`jitted(images, masks, p, settings)` through `compile_cache.cached_call` (with the persistent
  cache on, a later process neither traces nor compiles it again)."""
  from mri_jax import compile_cache

  key = f"{name}-{p}-{settings}"
  if masks is None:
    out = compile_cache.cached_call(key + "-otsu", lambda i: tuple(jitted(i, None, p, settings)), images)
  else:
    out = compile_cache.cached_call(key, lambda i, m: tuple(jitted(i, m, p, settings)), images, masks)
  return N4Result(*out)


def n4_traced(image: jax.Array, mask: jax.Array | None, p: Plan, settings: N4Settings) -> N4Result:
  """The uncompiled N4 body for use inside your own jit/vmap/grad (`p` from `n4.plan`)."""
  return _with_mask(image, mask, p, settings)
