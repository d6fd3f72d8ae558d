"""mri_jax: restore MRI scans (noise and bias field) with JAX.

Public API (grows with the project):
  mri_jax.physics  — the coil-physics simulator (`simulate`, `make_params`, `sample_params`, ...).
  mri_jax.n4       — N4 bias-field correction: JAX (`n4`, `n4_batch`, `n4_traced`) and SimpleITK
                     (`n4_sitk`) backends with shared `N4Settings`.
  mri_jax.data     — anatomy (`load_mni152`), synthetic subjects (`synth.synthesize`), dataset
                     examples (`pairs.generate`), input pipeline (`pipeline.make_loader`,
                     `pipeline.to_global`, `pipeline.corrupt_on_device`).
  mri_jax.io       — NIfTI read/write keeping header and affine, atomic writes.
  mri_jax.diffusion — restoration / linear / cosine / reverse-warm-up schedules and the K-step sampler.
  mri_jax.models   — Flax NNX `Autoencoder` and conditional `UNet`.
  mri_jax.train    — `train(config, workdir)`: data-parallel training with orbax resume.
  mri_jax.restore  — `load_model`, `restore_array`, `restore_nifti`, `export_weights` (shipped
                     default weights in mri_jax/weights/default).
  mri_jax.evaluate — the comparison with N4 / NLM / the oracle and the faithfulness tests.
  mri_jax.metrics  — masked SSIM / PSNR in JAX.
  mri_jax.workflows — the file-level jobs behind the `mri-jax` commands.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
