"""mri_jax: restore MRI scans (noise and bias field) with JAX.

Public API (import the submodules; `import mri_jax` itself stays light):
  mri_jax.physics   — the coil-physics simulator: `simulate(key, clean, params) -> Corrupted`,
                      `make_params`, `sample_params`, `SimulationParams`; building blocks
                      `coil_maps`, `biot_savart_sensitivity`, `falloff_sensitivity`,
                      `transmit_field`, `polynomial_field`, `legendre_field`, `receive_field`,
                      `complex_noise`, `add_noise`, `coil_covariance`, `rss`, `roemer`,
                      `roemer_gain`, `reference_intensity`. Pure jnp: jit / vmap / grad.
  mri_jax.n4        — N4 bias-field correction: JAX (`n4`, `n4_batch`, `n4_traced`, `plan`) and
                      SimpleITK (`n4_sitk`) backends with shared `N4Settings`; `otsu_mask`.
  mri_jax.io        — NIfTI read/write keeping header and affine, atomic writes (`io.nifti`).
  mri_jax.data      — anatomy (`anatomy.load_mni152`), synthetic subjects (`synth.synthesize`),
                      dataset examples (`pairs.generate`), input pipeline (`pipeline.make_loader`,
                      `pipeline.data_mesh`, `pipeline.to_global`, `pipeline.corrupt_on_device`).
  mri_jax.diffusion — restoration / linear / cosine / reverse-warm-up schedules (`make_schedule`,
                      `q_sample`, `noise_level`) and the K-step sampler (`sample`).
  mri_jax.models    — Flax NNX `Autoencoder` and conditional `UNet` (`nets`), and the restorer
                      itself (`restorer`: networks from a config, input preparation, sampling),
                      shared by training and inference.
  mri_jax.checkpoints — orbax train checkpoints and exported weights, keyed by parameter names.
  mri_jax.train     — `train(config, workdir)`: data-parallel training over a device mesh,
                      multi-host, orbax resume, validation, TensorBoard; `restore_batch`.
  mri_jax.restore   — inference: `load_model`, `restore_array`, `restore_nifti`, `export_weights`
                      (the shipped default weights live in mri_jax/weights/default). Never
                      imports `mri_jax.train`.
  mri_jax.evaluate  — the comparison with N4 / NLM / the oracle and the faithfulness tests.
  mri_jax.ablations — `collect(runs)`, `to_markdown`, `to_csv`, `plot`, `write`: one table of runs.
  mri_jax.metrics   — masked SSIM / PSNR in JAX (`masked_scores`, `ssim`, `psnr`, `normalise`).
  mri_jax.config    — `load("FILE[:ARG]", overrides)`: experiment configs (the `configs` package).
  mri_jax.file_jobs — the `simulate` / `n4` commands on files (`simulate_nifti`, `n4_nifti`,
                      `corruption_settings`, `simulate_array`, `n4_settings`).
  mri_jax.demo      — the main job on the embedded default (`demo`).
  mri_jax.data.build — `build_data(config, data_dir=...)`: the `build-data` command.
  mri_jax.cli       — the `mri-jax` command line (`main`): parses and calls the functions above.
"""

__version__ = "0.1.0"
__all__ = ["__version__", "ablations", "checkpoints", "cli", "config", "data", "demo", "diffusion", "evaluate",
           "file_jobs", "io", "metrics", "models", "n4", "physics", "restore", "train"]
