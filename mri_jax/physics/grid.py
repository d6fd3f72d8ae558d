"""Spatial grids and the smooth upsampling shared by the physics modules.

Convention: array axes are (x, y) in 2D and (x, y, z) in 3D, as nibabel returns NIfTI data; the
scanner bore (B0) runs along z, the last axis of a 3D volume and the through-plane direction of a 2D
slice. Coordinates are physical (voxel spacing applied), centred on the field of view and divided
by half the largest physical extent, so the field of view spans [-1, 1] along its longest axis.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _as_spacing(shape: Sequence[int], spacing) -> jax.Array:
  if spacing is None:
    return jnp.ones(len(shape), jnp.float32)
  try:  # concrete values are checked here; traced ones are the caller's responsibility
    concrete = np.asarray(spacing, np.float64)
  except jax.errors.TracerArrayConversionError:
    concrete = None
  if concrete is not None and (concrete.shape != (len(shape),) or np.any(concrete <= 0)
                               or not np.all(np.isfinite(concrete))):
    raise ValueError(f"spacing must be {len(shape)} positive finite numbers, got {concrete.tolist()}")
  return jnp.asarray(spacing, jnp.float32).reshape(len(shape))


def normalized_axes(shape: Sequence[int], spacing=None) -> list[jax.Array]:
  """Per-axis normalised coordinates of voxel centres.

  Args:
    shape: spatial shape, 2 or 3 axes (static).
    spacing: voxel size per axis (any unit, may be traced); isotropic when None.

  Returns:
    One 1-D float32 array per axis; the longest physical axis spans [-1 + h, 1 - h] where h is
    half a voxel of that axis.
  """
  spacing = _as_spacing(shape, spacing)
  extent = jnp.asarray(shape, jnp.float32) * spacing
  half = jnp.max(extent) / 2.0
  return [((jnp.arange(n, dtype=jnp.float32) + 0.5) * spacing[i] - extent[i] / 2.0) / half
          for i, n in enumerate(shape)]


def coarse_shape(shape: Sequence[int], size: int) -> tuple[int, ...]:
  """Shape of the coarse grid on which smooth fields are evaluated before upsampling."""
  return tuple(min(int(n), int(size)) for n in shape)


def coarse_spacing(shape: Sequence[int], coarse: Sequence[int], spacing) -> jax.Array:
  """Spacing of a coarse grid that covers exactly the same field of view as `shape`."""
  spacing = _as_spacing(shape, spacing)
  return spacing * jnp.asarray(shape, jnp.float32) / jnp.asarray(coarse, jnp.float32)


def points(shape: Sequence[int], spacing=None, z: jax.Array | float = 0.0) -> jax.Array:
  """Normalised 3-D coordinates of every voxel centre.

  Args:
    shape: spatial shape (2 or 3 axes).
    spacing: voxel size per axis.
    z: through-plane position of a 2-D slice in normalised units (ignored in 3-D; may be traced).

  Returns:
    (*shape, 3) float32 array of (x, y, z).
  """
  if len(shape) not in (2, 3):
    raise ValueError(f"expected a 2-D or 3-D shape, got {tuple(shape)}")
  mesh = list(jnp.meshgrid(*normalized_axes(shape, spacing), indexing="ij"))  # a tuple from jax 0.11
  if len(shape) == 2:
    mesh.append(jnp.broadcast_to(jnp.asarray(z, jnp.float32), mesh[0].shape))
  return jnp.stack(mesh, axis=-1)


def _keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
  t = np.abs(t)
  return np.where(
      t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
      np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))


@functools.lru_cache(maxsize=64)
def interpolation_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
  """The 4-tap cubic (Keys, a=-0.5) upsampling kernel: indices and weights per output point.

  Pixel-centre aligned, edge-replicated: both grids cover the same extent, output centre i maps to
  input position x = (i+0.5)·n_in/n_out − 0.5 and reads inputs floor(x) − 1 … floor(x) + 2 (clipped
  to the grid). Weights sum to one; n_out == n_in gives the identity.

  Returns:
    indices (n_out, 4) int32 and weights (n_out, 4) float32.
  """
  x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
  base = np.floor(x).astype(np.int64)
  taps = base[:, None] + np.arange(-1, 3)[None, :]
  weights = _keys_cubic(x[:, None] - taps)
  weights /= weights.sum(axis=1, keepdims=True)
  return np.clip(taps, 0, n_in - 1).astype(np.int32), weights.astype(np.float32)


@functools.lru_cache(maxsize=64)
def interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
  """(n_out, n_in) dense form of `interpolation_taps` (rows sum to one; edge taps accumulate)."""
  idx, w = interpolation_taps(n_out, n_in)
  mat = np.zeros((n_out, n_in), np.float64)
  np.add.at(mat, (np.repeat(np.arange(n_out), 4), idx.ravel()), w.ravel())
  return mat.astype(np.float32)


def upsample_axis(field: jnp.ndarray, axis: int, n_out: int) -> jnp.ndarray:
  """Cubic upsampling of one axis of a real `field` to `n_out` points, 4 gathered taps per point.

  Fast along a leading axis (each output slab is a weighted sum of 4 input slabs); along the
  contiguous last axis use the dense form (`upsample_trailing`).
  """
  n_in = field.shape[axis]
  if n_in == n_out:
    return field
  idx, w = interpolation_taps(int(n_out), int(n_in))
  bshape = [1] * field.ndim
  bshape[axis] = n_out
  out = 0
  for t in range(4):
    tap = jnp.take(field, jnp.asarray(idx[:, t]), axis=axis, mode="clip")
    out = out + tap * jnp.asarray(w[:, t]).reshape(bshape)
  return out


def upsample_trailing(field: jnp.ndarray, shape: Sequence[int]) -> jnp.ndarray:
  """Cubic upsampling of the spatial axes after the first (dense matrices, real `field`).

  The trailing len(shape) axes of `field` are spatial; the first spatial axis is left as it is.
  """
  lead = field.ndim - len(shape)
  for ax in reversed(range(1, len(shape))):
    n_in = field.shape[lead + ax]
    if n_in == shape[ax]:
      continue
    mat = jnp.asarray(interpolation_matrix(int(shape[ax]), int(n_in)))
    field = jnp.moveaxis(jnp.tensordot(mat, field, axes=((1,), (lead + ax,))), 0, lead + ax)
  return field


def upsample(field: jnp.ndarray, shape: Sequence[int]) -> jnp.ndarray:
  """Separable cubic upsampling of the trailing len(shape) axes of `field` to `shape`.

  Real and complex fields (a complex field is upsampled as its real and imaginary parts).
  """
  if jnp.iscomplexobj(field):
    return jax.lax.complex(upsample(jnp.real(field), shape), upsample(jnp.imag(field), shape))
  lead = field.ndim - len(shape)
  return upsample_axis(upsample_trailing(field, shape), lead, int(shape[0]))
