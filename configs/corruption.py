"""Corruption ranges for training data: the simulator's parameters are drawn from these.

Used by `mri_jax.physics.sample_params(key, get_config())`; the data builder and training configs
use the same ranges (defined once in `mri_jax.physics.sampling.training_ranges`). Ranges are
(low, high), uniform; numbers are fixed values.

Try it:
  python -c "import jax; from configs import corruption; from mri_jax import physics; \
print(physics.sample_params(jax.random.key(0), corruption.get_config()))"
"""

import ml_collections

from mri_jax.physics import sampling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the corruption config; `arg` = 'single_coil' gives the Rician (1-coil) variant."""
  return sampling.training_ranges(arg)
