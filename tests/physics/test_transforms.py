"""The simulator composes with JAX transforms: jit == eager, vmap == loop, finite gradients,
one trace per static configuration, determinism per key, and sharding over 8 devices."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mri_jax import physics

CFG = {"n_coils": 4, "noise_sigma": (0.02, 0.08), "poly_coefficient": 0.3, "b1_amplitude": (0.0, 0.3),
       "noise_correlation": (0.0, 0.5), "receive_strength": (0.3, 1.0)}


def _clean(shape=(32, 24), seed=0):
  x = np.random.default_rng(seed).uniform(0.2, 1.0, shape).astype(np.float32)
  return jnp.asarray(x)


@pytest.mark.parametrize("shape", [(32, 24), (16, 12, 10)])
@pytest.mark.parametrize("combine,domain", [("rss", "image"), ("roemer", "kspace")])
def test_jit_equals_eager(shape, combine, domain):
  cfg = dict(CFG, combine=combine, noise_domain=domain)
  params = physics.sample_params(jax.random.key(0), cfg)
  clean = _clean(shape)

  eager = physics.simulate(jax.random.key(1), clean, params)
  jitted = jax.jit(physics.simulate)(jax.random.key(1), clean, params)
  chex.assert_trees_all_close(eager, jitted, rtol=2e-5, atol=2e-5)
  chex.assert_shape([jitted.image, jitted.bias, jitted.receive], shape)
  assert bool(jnp.all(jnp.isfinite(jitted.image)))


def test_vmap_over_keys_params_and_images_equals_loop():
  keys = jax.random.split(jax.random.key(3), 5)
  params = jax.vmap(lambda k: physics.sample_params(k, CFG))(keys)
  cleans = jnp.stack([_clean(seed=i) for i in range(5)])
  noise_keys = jax.random.split(jax.random.key(4), 5)
  batched = jax.jit(jax.vmap(physics.simulate))(noise_keys, cleans, params)
  for i in range(5):
    p_i = jax.tree.map(lambda x: x[i], params)
    single = physics.simulate(noise_keys[i], cleans[i], p_i)
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], batched), single, rtol=2e-5, atol=2e-5)


def test_gradients_are_finite_wrt_image_and_continuous_parameters():
  clean = _clean()
  params = physics.sample_params(jax.random.key(5), CFG)
  target = _clean(seed=9)

  def loss(clean, params):
    out = physics.simulate(jax.random.key(6), clean, params)
    return jnp.mean((out.image - target) ** 2)

  g_clean, g_params = jax.jit(jax.grad(loss, argnums=(0, 1)))(clean, params)
  assert bool(jnp.all(jnp.isfinite(g_clean))) and float(jnp.abs(g_clean).max()) > 0
  for name in ("noise_sigma", "coil_distance", "coil_size", "b1_amplitude", "b1_width",
               "receive_strength", "noise_correlation", "poly_coefficients", "coil_phase", "coil_jitter"):
    g = getattr(g_params, name)
    assert bool(jnp.all(jnp.isfinite(g))), name
    assert float(jnp.abs(g).max()) > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("combine", ["rss", "roemer"])
def test_noise_free_gradients_are_finite_where_the_image_is_zero(combine):
  # A noise-free simulation has exactly zero signal in the background; |·| and RSS must still
  # give finite gradients there (fitting acquisition parameters to an image, notebook 04).
  clean = _clean().at[:8].set(0.0)
  params = physics.make_params(4, noise_sigma=0.0, combine=combine)

  def loss(b1, gamma):
    p = params.replace(b1_amplitude=b1, receive_strength=gamma)
    return jnp.mean(physics.simulate(jax.random.key(0), clean, p).image ** 2)

  grads = jax.grad(loss, argnums=(0, 1))(jnp.float32(0.2), jnp.float32(0.5))
  assert all(bool(jnp.isfinite(g)) and float(jnp.abs(g)) > 0 for g in grads), grads


def test_gradient_of_noise_sigma_matches_finite_differences():
  clean = _clean()
  params = physics.sample_params(jax.random.key(7), CFG)

  def f(sigma):
    return jnp.mean(physics.simulate(jax.random.key(8), clean, params.replace(noise_sigma=sigma)).image)

  s0 = params.noise_sigma
  g = jax.grad(f)(s0)
  h = 1e-3
  fd = (f(s0 + h) - f(s0 - h)) / (2 * h)
  np.testing.assert_allclose(g, fd, rtol=2e-2)


def test_no_retrace_when_only_values_change():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(key, clean, params):
    return physics.simulate(key, clean, params).image

  for i in range(4):
    params = physics.sample_params(jax.random.key(i), CFG)
    run(jax.random.key(100 + i), _clean(seed=i), params).block_until_ready()
  chex.clear_trace_counter()


def test_deterministic_per_key_and_different_across_keys():
  params = physics.sample_params(jax.random.key(0), CFG)
  clean = _clean()
  a = physics.simulate(jax.random.key(1), clean, params).image
  b = physics.simulate(jax.random.key(1), clean, params).image
  c = physics.simulate(jax.random.key(2), clean, params).image
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a - c).mean()) > 1e-3
  p1 = physics.sample_params(jax.random.key(11), CFG)
  p2 = physics.sample_params(jax.random.key(11), CFG)
  chex.assert_trees_all_equal(p1, p2)


def test_batch_sharded_over_eight_devices_equals_single_device():
  n_dev = jax.device_count()
  mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  keys = jax.random.split(jax.random.key(0), 2 * n_dev)
  params = jax.vmap(lambda k: physics.sample_params(k, CFG))(keys)
  cleans = jnp.stack([_clean(seed=i) for i in range(2 * n_dev)])
  sharding = NamedSharding(mesh, P("data"))
  sharded = jax.device_put((keys, cleans, params), sharding)
  run = jax.jit(jax.vmap(lambda k, c, p: physics.simulate(k, c, p).image))
  out = run(*sharded)
  assert len(out.sharding.device_set) == n_dev
  ref = run(keys, cleans, params)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_bad_static_parameters_raise_clear_errors():
  with pytest.raises(ValueError, match="n_rings"):
    physics.make_params(8, n_rings=3)
  with pytest.raises(ValueError, match="n_coils"):
    physics.make_params(65)
  with pytest.raises(ValueError, match="coil_model"):
    physics.make_params(4, coil_model="birdcage")
  with pytest.raises(TypeError, match="unknown"):
    physics.make_params(4, sigma=0.1)
  with pytest.raises(ValueError, match="2-D or 3-D"):
    physics.simulate(jax.random.key(0), jnp.ones((4, 4, 4, 4)), physics.make_params(1))
