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



def test_residual_path_blends_the_n4_image_by_its_gate():
  """out = dec + w·g·(n4 + Δ − dec): w = 0 is the plain decoder; a gate of 1 with Δ = 0 returns
  the N4 image exactly (a clean scan can pass through untouched); at the start g = sigmoid(−2)."""
  cfg = config.load("tiny.py:fidelity", ["--config.model.fidelity_residual=True"])
  r = R.Restorer.from_config(cfg)
  params = r.init_params(0)
  params["fid"] = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), params["fid"])
  x = jax.random.uniform(jax.random.key(2), (2, 16, 16, 1), minval=0.5, maxval=1.5)
  n4 = x * 1.1
  log_field = jnp.zeros_like(x)
  key = jax.random.key(3)
  ref = r.restore(dict(params, fid=None), x, n4, log_field, key)
  np.testing.assert_allclose(r.restore(params, x, n4, log_field, key, fidelity_weight=0.0), ref, atol=1e-6)
  opened = jax.tree.map(lambda a: a, params)  # gate fully open (bias +40), no correction
  opened["fid"]["res_gate"]["kernel"] = jnp.zeros_like(params["fid"]["res_gate"]["kernel"])
  opened["fid"]["res_gate"]["bias"] = jnp.full_like(params["fid"]["res_gate"]["bias"], 40.0)
  opened["fid"]["res_delta"]["kernel"] = jnp.zeros_like(params["fid"]["res_delta"]["kernel"])
  opened["fid"]["res_delta"]["bias"] = jnp.zeros_like(params["fid"]["res_delta"]["bias"])
  np.testing.assert_allclose(r.restore(opened, x, n4, log_field, key), n4[..., 0], atol=1e-5)
  init = r.init_params(0)["fid"]
  assert float(init["res_gate"]["bias"][0]) == -2.0 and not np.any(init["res_delta"]["kernel"])
  assert not R.fidelity_residual(config.load("tiny.py:fidelity"))

def test_bucket_shapes_and_padding_to_a_target():
  assert R.bucket_shape((37, 50), 16) == (48, 64)
  assert R.bucket_shape((197, 233), 16) == (208, 240)
  assert R.bucket_shape((256, 256), 16) == (256, 256)
  assert R.bucket_shape((257, 300), 16) == (288, 320)  # multiples of 32 above 256
  assert R.bucket_shape((60, 80), 4) == (64, 80)
  assert R.centred_pads((37, 50), 16, (64, 64)) == ((13, 14), (7, 7))
  with np.testing.assert_raises(ValueError):
    R.centred_pads((37, 50), 16, (40, 64))  # not a multiple of the factor
  assert [R.padded_batch(n, 16) for n in (1, 2, 3, 5, 9, 16, 40)] == [1, 2, 4, 8, 16, 16, 16]


def test_prepare_slices_with_a_volume_field_keeps_slice_equal_n4_times_field():
  rng = np.random.default_rng(1)
  slices = rng.uniform(0.5, 2.0, (4, 30, 40)).astype(np.float32)
  mask = np.zeros_like(slices, bool)
  mask[:, 4:26, 5:35] = True
  log_field = np.linspace(-0.3, 0.3, 4)[:, None, None] + np.linspace(0, 0.2, 40)[None, None, :] + 0 * slices
  prep = R.prepare_slices(slices, mask, 16, log_field=log_field, shape=(32, 48))
  assert prep.corrupted.shape == (4, 32, 48)
  np.testing.assert_allclose(prep.n4 * np.exp(prep.log_field), prep.corrupted, rtol=1e-5, atol=1e-6)
  fg = R.scale_foreground(prep.corrupted, prep.mask)
  for x, m in zip(prep.n4, fg):  # the N4 image on the model's scale, as the training records'
    assert abs(x[m].mean() - 1.0) < 1e-4
  # the field's shape across the slice is kept (only a per-slice constant moves)
  d = prep.log_field[prep.crop] - log_field
  np.testing.assert_allclose(d - d.mean(axis=(1, 2), keepdims=True), 0.0, atol=1e-5)
