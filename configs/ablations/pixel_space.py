"""Ablation: the same UNet on images (no autoencoder; no autoencoder stage).

Launch:
  mri-jax train --config configs/ablations/pixel_space.py --workdir runs/pixel --config.data.data_dir=data
"""

from configs import default


def get_config():
  c = default.get_config()
  c.model.space = "pixel"
  return c
