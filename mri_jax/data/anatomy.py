"""The embedded default anatomy: the MNI152 (ICBM 2009) template shipped inside nilearn's wheel.

Loaded offline with nilearn's own loaders; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported in load_mni152: the data generators run without nibabel (GPU recipe)
  import nibabel as nib


@dataclasses.dataclass(frozen=True)
class Anatomy:
  """A clean T1 image with tissue probability maps on the same 1 mm grid.

  Attributes:
    t1: (X, Y, Z) float32 in [0, 1].
    gm, wm, csf: tissue probability maps in [0, 1].
    mask: brain mask (bool).
    image: the T1 as a nibabel image (affine and header, RAS+).
  """

  t1: np.ndarray
  gm: np.ndarray
  wm: np.ndarray
  csf: np.ndarray
  mask: np.ndarray
  image: nib.Nifti1Image


def load_mni152() -> Anatomy:
  """Loads the 1 mm MNI152 2009 T1 template, its GM/WM/CSF maps and brain mask (offline)."""
  import nibabel as nib

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)

  def arr(img):
    return np.asarray(img.get_fdata(dtype=np.float32))

  gm_a, wm_a = arr(gm), arr(wm)
  mask_a = arr(mask) > 0.5
  csf_a = np.clip(mask_a.astype(np.float32) - gm_a - wm_a, 0.0, 1.0)
  t1_a = arr(t1)
  t1_a = t1_a / max(float(t1_a.max()), 1e-6)
  image = nib.Nifti1Image(t1_a, t1.affine, t1.header)
  return Anatomy(t1=t1_a, gm=gm_a, wm=wm_a, csf=csf_a, mask=mask_a, image=image)
