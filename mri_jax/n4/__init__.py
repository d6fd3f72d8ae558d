"""N4 bias-field correction: a jit-able JAX implementation and SimpleITK's as the reference.

Both backends take the same `N4Settings` and return the same `N4Result` (corrected image, full-
resolution log field, the mask used, iterations run). `correct` picks one by name.
"""

from mri_jax.n4.jax_n4 import N4Result, n4, n4_batch, n4_traced, otsu_mask, sharpen
from mri_jax.n4.reference import n4_sitk
from mri_jax.n4.settings import N4Settings, Plan, plan

BACKENDS = ("jax", "sitk")


def correct(image, mask=None, *, backend: str = "jax", spacing=None,
            settings: N4Settings = N4Settings()) -> N4Result:
  """N4 with the named backend ('jax' or 'sitk'); see `n4` for the arguments."""
  if backend == "jax":
    return n4(image, mask, spacing=spacing, settings=settings)
  if backend == "sitk":
    return n4_sitk(image, mask, spacing=spacing, settings=settings)
  raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


__all__ = ["BACKENDS", "N4Result", "N4Settings", "Plan", "correct", "n4", "n4_batch", "n4_sitk",
           "n4_traced", "otsu_mask", "plan", "sharpen"]
