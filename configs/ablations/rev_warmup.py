"""Ablation: "reverse warm-up" schedule (near-zero β for the first 30% of the chain, then linear).

Launch:
  mri-jax train --config configs/ablations/rev_warmup.py --workdir runs/rev_warmup --config.data.data_dir=data
"""

from configs import default


def get_config():
  c = default.get_config()
  c.schedule.kind = "reverse_warmup"
  c.schedule.steps = 50
  c.schedule.sample_steps = 10
  return c
