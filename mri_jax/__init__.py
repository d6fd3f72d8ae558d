"""mri_jax: restore MRI scans (noise and bias field) with JAX.

Public API (grows with the project):
  mri_jax.physics  — the coil-physics simulator (`simulate`, `make_params`, `sample_params`, ...).
  mri_jax.n4       — N4 bias-field correction: JAX (`n4`, `n4_batch`, `n4_traced`) and SimpleITK
                     (`n4_sitk`) backends with shared `N4Settings`.
  mri_jax.data     — anatomy (`load_mni152`), synthetic subjects (`synth.synthesize`), dataset
                     examples (`pairs.generate`), input pipeline (`pipeline.make_loader`,
                     `pipeline.to_global`, `pipeline.corrupt_on_device`).
  mri_jax.io       — NIfTI read/write keeping header and affine, atomic writes.
  mri_jax.workflows — the file-level jobs behind the `mri-jax` commands.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
