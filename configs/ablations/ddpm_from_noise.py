"""Ablation: classic DDPM/DDIM from pure noise (linear β, 50 steps) instead of the restoration chain.

Launch:
  mri-jax train --config configs/ablations/ddpm_from_noise.py --workdir runs/ddpm --config.data.data_dir=data
  (`:cosine` selects the cosine schedule: --config configs/ablations/ddpm_from_noise.py:cosine)
"""

from configs import default


def get_config(arg=None):
  c = default.get_config()
  c.schedule.kind = "cosine" if arg == "cosine" else "linear"
  c.schedule.steps = 50
  c.schedule.sample_steps = 10
  return c
