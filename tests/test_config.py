"""Experiment configs: loading (`mri_jax.config`: FILE:ARG, typed overrides, locked) and the
corruption config's ranges."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import corruption
from mri_jax import config, physics
from mri_jax.errors import UserInputError


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


def test_configs_load_from_any_folder_with_typed_overrides(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # the packaged configs are found without the repository on sys.path
  cfg = config.load("configs/tiny.py", ["--config.train.batch=16", "--config.optimizer.lr=0.01",
                                        "--config.model.condition_n4=false", "--config.model.unet_channels=8,16"])
  assert cfg.train.batch == 16 and cfg.optimizer.lr == 0.01 and cfg.model.condition_n4 is False
  assert tuple(cfg.model.unet_channels) == (8, 16) and cfg.data.name == "mri_pairs/tiny"
  assert config.load("ablations/steps_k.py:3").schedule.sample_steps == 3
  with pytest.raises(AttributeError):  # locked: a typo never becomes a new field
    cfg.train.bacth = 4


@pytest.mark.parametrize("spec, overrides, message", [
    ("tiny.py", ["--config.train.nope=1"], "no field"),
    ("tiny.py", ["--config.train.batch=x"], "invalid literal"),
    ("tiny.py", ["--batch=3"], "unrecognised"),
    ("none.py", [], "does not exist"),
    ("ablations/steps_k.py:99", [], "K must be in"),
])
def test_config_errors_are_one_line(spec, overrides, message):
  with pytest.raises(UserInputError, match=message) as err:
    config.load(spec, overrides)
  assert "\n" not in str(err.value)
