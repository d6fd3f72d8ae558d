"""The corruption config samples valid parameters, deterministically per key."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import corruption
from mri_jax import physics


@pytest.mark.parametrize("arg", [None, "single_coil"])
def test_corruption_config_samples_within_ranges(arg):
  cfg = corruption.get_config(arg)
  params = jax.vmap(lambda k: physics.sample_params(k, cfg))(jax.random.split(jax.random.key(0), 64))
  sigma = np.asarray(params.noise_sigma)
  assert sigma.min() >= cfg.noise_sigma[0] and sigma.max() <= cfg.noise_sigma[1]
  assert np.abs(np.asarray(params.poly_coefficients)).max() <= cfg.poly_coefficient
  assert params.n_coils == cfg.n_coils
  one = jax.tree.map(lambda x: x[0], params)
  out = physics.simulate(jax.random.key(1), jnp.ones((32, 32)), one)
  assert bool(jnp.all(jnp.isfinite(out.image)))
  chex.assert_trees_all_equal(physics.sample_params(jax.random.key(3), cfg),
                              physics.sample_params(jax.random.key(3), cfg))


def test_unknown_variant_is_rejected():
  with pytest.raises(ValueError, match="unknown corruption variant"):
    corruption.get_config("nope")
