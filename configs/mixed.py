"""The restorer on the mixed data: randomised anatomy and contrast (heads with skull and scalp,
body-like scenes, tight crops, embedded odd-sized images) with wide corruption, and the residual
fidelity path (the input's pixels fed into the decoder past the latent, and the N4 image + a
learned correction blended into the output by a learned gate).

Sized for a 2-core CPU (1,500 autoencoder + 6,000 UNet + 6,000 fidelity steps, about 2 h on the
2-core CI-class machine); the shipped weights come from:
  mri-jax build-data --config mixed128 --data-dir data
  mri-jax train --config configs/mixed.py --workdir runs/mixed --config.data.data_dir=data
  mri-jax export-weights runs/mixed mri_jax/weights/default
(They were trained with `--init-from` a finished run of the previous version of this config, which
differed only in the fidelity path: the new run starts at the fidelity stage with that run's
autoencoder and UNet, the state a run from scratch has there — tests/train checks the equality.)
On a GPU, scale it up (a new workdir): --config.train.batch=64 --config.train.ae_steps=20000
--config.train.diffusion_steps=40000 --config.train.fidelity_steps=20000.
"""

from configs import default


def get_config(arg=None):
  """`arg` = 'no_fidelity': the same run without the fidelity path (the ablation); 'joint': with
  4,500 joint-stage steps after the fidelity stage (UNet + path trained on the output's loss);
  'fine': fine-tuning on the `mixed128fine` data (finer anatomy per pixel), meant for
  `mri-jax train --warm-start mri_jax/weights/default`: 600 autoencoder, 2,500 UNet and 3,000
  fidelity steps at a third of the learning rate (about 1 h on the 2-core CPU; tried in the
  seventh pass of issue 15, not shipped: the network alone gained 0.03 SSIM on real scans, restore
  did not; benchmarks/RESULTS.md); 'narrow': the same recipe with the autoencoder and fidelity
  path at half width (8-16-32): the network on a 256² slice 1.8× faster (0.10 s), restore 0.001–
  0.002 SSIM lower and 89.9 % hypo-intense lesion contrast (tried in the fourteenth pass of issue
  15, not shipped; benchmarks/RESULTS.md); 'fast': the network made for speed: the autoencoder at
  half width (8-16-32), the UNet at 24-48-96, no N4 conditioning and no fidelity path (restore
  still runs N4 and its later stages), ≈ 50 ms per 256² slice on the 2-core CPU against ≈ 175 ms
  (seventeenth pass of issue 15; benchmarks/RESULTS.md)."""
  c = default.get_config()
  c.data.name = "mri_pairs/mixed128"
  c.model.fidelity = arg not in ("no_fidelity", "fast")
  c.train.ae_steps = 1_500
  c.train.diffusion_steps = 6_000
  c.model.fidelity_residual = c.model.fidelity
  c.train.fidelity_steps = 6_000 if c.model.fidelity else 0
  # 'joint': the joint stage after the others (tried in the sixth pass of issue 15, not shipped:
  # benchmarks/RESULTS.md); the shipped weights have none
  c.train.joint_steps = 4_500 if arg == "joint" else 0
  c.train.eval_every = 500
  if arg == "fine":
    c.data.name = "mri_pairs/mixed128fine"
    c.train.ae_steps, c.train.diffusion_steps, c.train.fidelity_steps = 600, 2_500, 3_000
    c.optimizer.lr = 3e-4
  if arg in ("narrow", "fast"):
    c.model.ae_channels = (8, 16, 32)
  if arg == "fast":
    c.model.unet_channels = (24, 48, 96)
    c.model.condition_n4 = False
  if arg not in (None, "", "no_fidelity", "joint", "fine", "narrow", "fast"):
    raise ValueError(f"unknown mixed variant {arg!r} (known: no_fidelity, joint, fine, narrow, fast)")
  return c
