"""N4 settings shared by both backends, and the per-axis choices derived from an image's shape."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from mri_jax.n4 import bspline

MIN_AXIS = 2          # fewer voxels than this along an axis: N4 is refused
MIN_SHRUNK_AXIS = 16  # the shrink factor of an axis is lowered so it keeps this many voxels


@dataclasses.dataclass(frozen=True)
class N4Settings:
  """N4 parameters (the defaults are SimpleITK's, with the usual shrink factor 4).

  Attributes:
    shrink: shrink factor applied before fitting: the image and mask are subsampled every
      `shrink` voxels as ITK's ShrinkImageFilter does (per axis, lowered on short axes so each keeps
      at least `min_shrunk` voxels, or all of them when shorter); the field is evaluated at full
      resolution.
    iterations: maximum iterations per fitting level; the number of levels is its length.
    convergence: stop a level when the coefficient of variation of exp(Δ log field) inside the
      mask falls below this (0 ⇒ always run every iteration).
    control_points: control points per axis at the first level (≥ 4; one int or one per axis).
      Ignored when `spline_distance` is set.
    spline_distance: distance between control points at the first level, in the units of the
      voxel spacing (mm); sets control points per axis as ceil(extent / distance) + 3.
    bins: histogram bins for the sharpening step.
    fwhm: full width at half maximum of the Gaussian assumed to blur the log-intensity histogram.
    wiener: Wiener filter noise used when deconvolving the histogram.
    min_shrunk: the shrink factor of an axis is lowered so that the axis keeps at least this many
      voxels (`MIN_SHRUNK_AXIS` by default; restore asks for more, `restore.RESTORE_N4_MIN_SHRUNK`).
  """

  shrink: int = 4
  iterations: tuple[int, ...] = (50, 50, 50, 50)
  convergence: float = 0.001
  control_points: int | tuple[int, ...] = 4
  spline_distance: float | None = None
  bins: int = 200
  fwhm: float = 0.15
  wiener: float = 0.01
  min_shrunk: int = MIN_SHRUNK_AXIS

  def __post_init__(self):
    object.__setattr__(self, "iterations", tuple(int(i) for i in np.atleast_1d(self.iterations)))
    if isinstance(self.control_points, (list, tuple, np.ndarray)):
      object.__setattr__(self, "control_points", tuple(int(c) for c in self.control_points))
    self.validate()

  def validate(self) -> None:
    """Raises ValueError on a value out of range (the CLI turns it into a one-line error)."""
    cps = self.control_points if isinstance(self.control_points, tuple) else (self.control_points,)
    checks = [
        (isinstance(self.shrink, (int, np.integer)) and 1 <= self.shrink <= 16,
         f"shrink must be an integer in [1, 16], got {self.shrink}"),
        (len(self.iterations) >= 1 and all(0 <= i <= 1000 for i in self.iterations)
         and sum(self.iterations) > 0,
         f"iterations must be 1+ levels of 0-1000 iterations (not all 0), got {list(self.iterations)}"),
        (len(self.iterations) <= 8, f"at most 8 fitting levels, got {len(self.iterations)}"),
        (0.0 <= self.convergence < 1.0, f"convergence must be in [0, 1), got {self.convergence}"),
        (all(4 <= c <= 64 for c in cps), f"control points must be in [4, 64], got {self.control_points}"),
        (self.spline_distance is None or (math.isfinite(self.spline_distance) and self.spline_distance > 0),
         f"spline distance must be positive, got {self.spline_distance}"),
        (16 <= self.bins <= 4096, f"histogram bins must be in [16, 4096], got {self.bins}"),
        (0.0 < self.fwhm <= 5.0, f"FWHM must be in (0, 5], got {self.fwhm}"),
        (0.0 < self.wiener <= 1.0, f"Wiener noise must be in (0, 1], got {self.wiener}"),
        (isinstance(self.min_shrunk, (int, np.integer)) and 1 <= self.min_shrunk <= 4096,
         f"min_shrunk must be an integer in [1, 4096], got {self.min_shrunk}"),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class Plan:
  """What N4 will do on one image shape (static: shapes and counts only)."""

  shape: tuple[int, ...]
  shrink: tuple[int, ...]
  shrunk_shape: tuple[int, ...]
  control_points: tuple[int, ...]  # first level
  iterations: tuple[int, ...]

  def control_points_at(self, level: int) -> tuple[int, ...]:
    return tuple(bspline.n_control_points(c, level) for c in self.control_points)

  def shrunk_indices(self) -> list[np.ndarray]:
    """Full-resolution indices of the shrunk grid's voxels: the centre voxel of each block."""
    return [np.minimum(np.arange(m) * s + (s - 1) // 2, n - 1)
            for n, s, m in zip(self.shape, self.shrink, self.shrunk_shape)]

  def shrunk_positions(self) -> list[np.ndarray]:
    """Positions of the shrunk grid's voxels in full-resolution index units."""
    return [i.astype(np.float64) for i in self.shrunk_indices()]

  def full_positions(self) -> list[np.ndarray]:
    return [np.arange(n, dtype=np.float64) for n in self.shape]


def plan(shape: Sequence[int], settings: N4Settings, spacing: Sequence[float] | None = None) -> Plan:
  """Per-axis shrink factors and control points for an image of `shape`.

  Raises:
    ValueError: not 2-D/3-D, or an axis shorter than 4 voxels.
  """
  shape = tuple(int(n) for n in shape)
  if len(shape) not in (2, 3):
    raise ValueError(f"N4 needs a 2-D or 3-D image, got shape {shape}")
  if min(shape) < MIN_AXIS:
    raise ValueError(f"image of shape {shape} is too small for N4 (need ≥ {MIN_AXIS} voxels per axis)")
  spacing = tuple(float(s) for s in (spacing if spacing is not None else (1.0,) * len(shape)))
  if len(spacing) != len(shape) or any(not (s > 0 and math.isfinite(s)) for s in spacing):
    raise ValueError(f"spacing must be {len(shape)} positive numbers, got {spacing}")
  shrink = tuple(max(1, min(settings.shrink, n // settings.min_shrunk)) for n in shape)
  shrunk = tuple(-(-n // s) for n, s in zip(shape, shrink))
  if settings.spline_distance is not None:
    cps = tuple(max(4, math.ceil((n - 1) * sp / settings.spline_distance) + bspline.ORDER)
                for n, sp in zip(shape, spacing))
  elif isinstance(settings.control_points, tuple):
    if len(settings.control_points) != len(shape):
      raise ValueError(f"{len(settings.control_points)} control-point counts given for a "
                       f"{len(shape)}-D image")
    cps = settings.control_points
  else:
    cps = (int(settings.control_points),) * len(shape)
  return Plan(shape=shape, shrink=shrink, shrunk_shape=shrunk, control_points=tuple(cps),
              iterations=settings.iterations)
