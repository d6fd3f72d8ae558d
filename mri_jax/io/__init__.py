"""NIfTI input/output that keeps the header and affine and writes atomically."""

from mri_jax.io.nifti import NiftiImage, atomic_write_bytes, load_nifti, save_nifti_like

__all__ = ["NiftiImage", "atomic_write_bytes", "load_nifti", "save_nifti_like"]
