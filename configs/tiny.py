"""A few-seconds-per-stage run for tests and smoke checks on CPU (48² slices of the tiny dataset).

Launch:
  mri-jax build-data --config tiny --data-dir data
  mri-jax train --config configs/tiny.py --workdir runs/tiny --config.data.data_dir=data
  mri-jax train --config configs/tiny.py:fidelity --workdir runs/tiny_fid --config.data.data_dir=data
"""

from configs import default


def get_config(arg=None):
  """`arg` = 'fidelity' adds the fidelity path and its stage (10 steps)."""
  c = default.get_config()
  c.data.name = "mri_pairs/tiny"
  c.model.ae_channels = (8, 16)       # downsampling 2
  c.model.latent = 2
  c.model.unet_channels = (16, 32)
  c.model.emb = 32
  c.model.n4_iterations = (10, 10)    # the tiny dataset's N4
  c.optimizer.lr = 2e-3
  c.optimizer.warmup = 2
  c.train.ae_steps = 20
  c.train.diffusion_steps = 20
  c.train.batch = 8
  c.train.log_every = 5
  c.train.checkpoint_every = 10
  c.train.keep = 2
  c.train.eval_every = 10
  c.train.eval_batches = 1
  if arg == "fidelity":
    c.model.fidelity = True
    c.train.fidelity_steps = 10
  elif arg not in (None, ""):
    raise ValueError(f"unknown tiny variant {arg!r} (known: fidelity)")
  return c
