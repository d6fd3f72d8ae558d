"""Weights saved and loaded by name: named pytrees, exported weights and their damage reports."""

import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mri_jax import checkpoints, config, restore
from mri_jax.errors import UserInputError
from mri_jax.models.restorer import Restorer


def _tiny_restorer():
  cfg = config.load("tiny.py")
  return cfg, Restorer.from_config(cfg)


def test_named_round_trip_and_adding_a_parameter_moves_no_key():
  tree = {"b": {"w": jnp.ones((2,)), "v": jnp.zeros((3,))}, "a": [jnp.arange(2.0), (jnp.ones(1),)]}
  nested = checkpoints.named(tree)
  assert set(nested) == {"a", "b"} and set(nested["a"]) == {"0", "1"}
  back = checkpoints.from_named(tree, nested)
  for x, y in zip(jax.tree.leaves(tree), jax.tree.leaves(back)):
    np.testing.assert_array_equal(x, y)
  grown = {**tree, "b": {**tree["b"], "aa": jnp.full((4,), 2.0)}}  # a new parameter sorts first
  assert checkpoints.named(grown)["b"]["w"] is nested["b"]["w"]
  with pytest.raises(UserInputError, match="no entry b/aa"):
    checkpoints.from_named(grown, nested)
  with pytest.raises(UserInputError, match="do not match"):
    checkpoints.from_named({"b": {"w": jnp.ones((5,))}}, nested)


def test_weight_template_allocates_nothing():
  _, r = _tiny_restorer()
  template = r.abstract_params()
  leaves = jax.tree.leaves(template)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  params = r.init_params(0)
  assert jax.tree.structure(params) == jax.tree.structure(template)


@pytest.fixture
def exported(tmp_path):
  cfg, r = _tiny_restorer()
  out = tmp_path / "export"
  checkpoints.save_weights(out, cfg.to_dict(), r.init_params(0))
  return out


def test_exported_weights_load_and_restore(exported):
  model = restore.load_model(exported)
  x = np.random.default_rng(0).uniform(0.1, 1.0, (24, 24)).astype(np.float32)
  out = restore.restore_array(x, model)
  assert out.image.shape == x.shape and np.all(np.isfinite(out.image))


@pytest.mark.parametrize("damage, message", [
    ("truncated", "not a weights file"),
    ("text", "not a weights file"),
    ("nan", "NaN or Inf weights"),
    ("missing", "missing"),
])
def test_damaged_weights_are_one_clear_error(exported, damage, message):
  npz = exported / checkpoints.WEIGHTS_FILE
  if damage == "truncated":
    npz.write_bytes(npz.read_bytes()[:1000])
  elif damage == "text":
    npz.write_text("these are not weights\n")
  else:
    with np.load(npz) as z:
      flat = {k: z[k] for k in z.files}
    name = sorted(flat)[0]
    if damage == "nan":
      flat[name] = np.full_like(flat[name], np.nan)
    else:
      del flat[name]
    np.savez(npz, **flat)
  with pytest.raises(UserInputError, match=message) as err:
    restore.load_model(exported)
  assert "allow_pickle" not in str(err.value) and "\n" not in str(err.value)
  assert not isinstance(err.value, zipfile.BadZipFile)
