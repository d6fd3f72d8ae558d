"""SimpleITK's N4 (`N4BiasFieldCorrectionImageFilter`) with the settings practitioners use.

The usual recipe: shrink image and mask, run N4 on the shrunk pair, then evaluate the log field
on the full-resolution grid (`GetLogBiasFieldAsImage`) and divide. Arrays are (X, Y[, Z]) as nibabel
returns them; spacing is passed to ITK. N4 takes the log of the image, so voxels ≤ 0 are removed
from the mask and replaced, for ITK only, by the smallest positive value (the returned corrected
image is the original divided by the field, so their values are kept).
"""

from __future__ import annotations

import numpy as np

from mri_jax.n4.jax_n4 import N4Result
from mri_jax.n4.settings import N4Settings, plan as make_plan


def _to_sitk(arr: np.ndarray, spacing):
  import SimpleITK as sitk

  img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(arr).T))  # ITK index order is x, y, z
  img.SetSpacing(tuple(float(s) for s in spacing))
  return img


def n4_sitk(image, mask=None, *, spacing=None, settings: N4Settings = N4Settings()) -> N4Result:
  """N4 with SimpleITK; same arguments and result as `mri_jax.n4.n4` (NumPy arrays).

  Args:
    image: (X, Y) or (X, Y, Z) array.
    mask: boolean array of the same shape, or None for Otsu's mask (the same one the JAX backend
      computes, so the two backends see identical inputs).
    spacing: voxel size per axis (mm); defaults to 1.
    settings: `N4Settings` (shrink per axis as `settings.plan` decides).
  """
  import SimpleITK as sitk

  from mri_jax.n4.jax_n4 import otsu_mask

  image = np.asarray(image, np.float32)
  spacing = tuple(float(s) for s in (spacing if spacing is not None else (1.0,) * image.ndim))
  p = make_plan(image.shape, settings, spacing)
  mask = np.asarray(otsu_mask(image, settings)) if mask is None else np.asarray(mask, bool)
  if mask.shape != image.shape:
    raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
  valid = mask & (image > 0)
  positive = image[image > 0]
  floor = float(positive.min()) if positive.size else 1.0
  safe = np.where(image > 0, image, floor).astype(np.float32)

  full = _to_sitk(safe, spacing)
  mask_img = sitk.Cast(_to_sitk(valid.astype(np.uint8), spacing), sitk.sitkUInt8)
  shrunk = sitk.Shrink(full, list(p.shrink))
  shrunk_mask = sitk.Shrink(mask_img, list(p.shrink))

  f = sitk.N4BiasFieldCorrectionImageFilter()
  f.SetMaximumNumberOfIterations([int(i) for i in p.iterations])
  f.SetConvergenceThreshold(float(settings.convergence))
  f.SetNumberOfControlPoints([int(c) for c in p.control_points])
  f.SetSplineOrder(3)
  f.SetNumberOfHistogramBins(int(settings.bins))
  f.SetBiasFieldFullWidthAtHalfMaximum(float(settings.fwhm))
  f.SetWienerFilterNoise(float(settings.wiener))
  if np.any(sitk.GetArrayViewFromImage(shrunk_mask)):
    f.Execute(shrunk, shrunk_mask)
    log_field = sitk.GetArrayFromImage(f.GetLogBiasFieldAsImage(full)).T.astype(np.float32)
    iters = np.asarray([int(f.GetElapsedIterations())], np.int32)
  else:  # nothing to fit
    log_field = np.zeros_like(image)
    iters = np.zeros(1, np.int32)
  return N4Result(corrected=image / np.exp(log_field), log_field=log_field, mask=valid,
                  iterations=iters)
