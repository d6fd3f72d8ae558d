"""Ablation: K sampler steps at evaluation (train once with the default, sample with K = arg).

Launch:
  mri-jax train --config configs/ablations/steps_k.py:4 --workdir runs/steps_4 --config.data.data_dir=data
"""

from configs import default


def get_config(arg="4"):
  c = default.get_config()
  c.schedule.sample_steps = int(arg)
  if not 1 <= c.schedule.sample_steps <= c.schedule.steps:
    raise ValueError(f"K must be in [1, {c.schedule.steps}], got {arg}")
  return c
