"""Ablation: no N4 conditioning (the UNet sees only the corrupted latent).

Launch:
  mri-jax train --config configs/ablations/no_n4.py --workdir runs/no_n4 --config.data.data_dir=data
"""

from configs import default


def get_config():
  c = default.get_config()
  c.model.condition_n4 = False
  return c
