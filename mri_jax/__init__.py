"""mri_jax: restore MRI scans (noise and bias field) with JAX.

Public API (grows with the project):
  mri_jax.physics  — the coil-physics simulator (`simulate`, `make_params`, `sample_params`, ...).
  mri_jax.io       — NIfTI read/write keeping header and affine, atomic writes.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
