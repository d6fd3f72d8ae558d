"""The restorer module: input preparation, weight templates, and the fidelity path."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mri_jax import config
from mri_jax.models import restorer as R


def test_prepare_slices_pads_centred_and_crops_back():
  rng = np.random.default_rng(0)
  slices = rng.uniform(0.5, 2.0, (3, 37, 50)).astype(np.float32)
  mask = np.zeros_like(slices, bool)
  mask[:, 5:30, 10:45] = True
  prep = R.prepare_slices(slices, mask, 16, n4_backend="none")
  assert prep.corrupted.shape == (3, 48, 64)
  assert R.centred_pads((37, 50), 16) == ((5, 6), (7, 7))
  np.testing.assert_allclose(prep.corrupted[prep.crop] * prep.scale[:, None, None], slices, rtol=1e-6)
  fg = R.scale_foreground(slices, mask)  # non-air: everything above a fraction of Otsu's threshold
  assert fg.all()  # these slices hold no air
  for x, m in zip(prep.corrupted[prep.crop], fg):  # the model's input scale: foreground mean 1
    assert abs(x[m].mean() - 1.0) < 1e-5
  np.testing.assert_array_equal(prep.n4, prep.corrupted)
  assert not prep.log_field.any()


def test_fidelity_weight_zero_is_the_plain_decoder():
  cfg = config.load("tiny.py:fidelity")
  r = R.Restorer.from_config(cfg)
  params = r.init_params(0)
  # a trained path has non-zero fusion kernels: give it some
  params["fid"] = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), params["fid"])
  x = jax.random.uniform(jax.random.key(2), (2, 16, 16, 1), minval=0.5, maxval=1.5)
  log_field = jnp.zeros_like(x)
  key = jax.random.key(3)
  plain = dict(params, fid=None)
  ref = r.restore(plain, x, x, log_field, key)
  np.testing.assert_allclose(r.restore(params, x, x, log_field, key, fidelity_weight=0.0), ref, atol=1e-6)
  full = r.restore(params, x, x, log_field, key)
  assert float(jnp.abs(full - ref).max()) > 1e-3
  # the path's parameters come from their own key branch: the AE and UNet are those of the plain config
  plain_cfg = config.load("tiny.py")
  base = R.Restorer.from_config(plain_cfg).init_params(0)
  for a, b in zip(jax.tree.leaves(base["unet"]), jax.tree.leaves(params["unet"])):
    np.testing.assert_array_equal(a, b)
  assert isinstance(r.fidelity_net(params["fid"]), nnx.Module)
