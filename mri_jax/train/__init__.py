"""Training of the restorer (autoencoder, then latent diffusion), data parallel over a mesh.

  trainer.py      losses, jitted train / validation steps, the loop (`train`)
  train_state.py  `TrainState` (typed pytree) and the optimisers
  writers.py      the workdir's config.json, metrics.jsonl / TensorBoard, PNG grids
The networks and their input preparation live in `mri_jax.models.restorer`; checkpoints in
`mri_jax.checkpoints`.
"""

from mri_jax.train.train_state import TrainState, init_state
from mri_jax.train.trainer import make_setup, make_steps, restore_batch, train

__all__ = ["TrainState", "init_state", "make_setup", "make_steps", "restore_batch", "train"]
