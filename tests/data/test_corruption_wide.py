"""The 'wide' corruption ranges (issue 14): shares of clean examples, σ and field ranges, g-factor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mri_jax import physics
from mri_jax.data import pairs
from mri_jax.physics import sampling

WIDE = sampling.training_ranges("wide")


def test_wide_ranges_draw_noise_free_and_bias_free_examples():
  keys = jax.random.split(jax.random.key(0), 2000)
  p = jax.vmap(lambda k: physics.sample_params(k, WIDE))(keys)
  no_noise = np.asarray(p.noise_sigma) == 0
  flat = (np.asarray(p.receive_strength) == 0) & (np.asarray(p.b1_amplitude) == 0) & \
         (np.abs(np.asarray(p.poly_coefficients)).max(1) == 0)
  # 10% each: 2000 draws put the share within ±3% (> 4 binomial standard deviations).
  assert abs(no_noise.mean() - 0.1) < 0.03 and abs(flat.mean() - 0.1) < 0.03
  sig = np.asarray(p.noise_sigma)[~no_noise]
  assert sig.min() >= 0.005 - 1e-7 and sig.max() <= 0.10 + 1e-7
  assert np.median(sig) < 0.03  # log-uniform: the median is the geometric mean 0.022
  # Polynomial orders 0-5 from one compiled order: high-degree terms are sometimes zeroed.
  deg = physics.poly_exponents(5).sum(1)
  assert (np.abs(np.asarray(p.poly_coefficients)[:, deg == 5]).max(1) == 0).mean() > 0.5


def test_default_ranges_draw_exactly_as_before_the_optional_entries():
  """Configs without the new entries keep their draws (old datasets stay reproducible)."""
  cfg = sampling.training_ranges()
  plain = physics.sample_params(jax.random.key(9), cfg)
  cfg.p_no_noise = 0.0
  again = physics.sample_params(jax.random.key(9), cfg)
  jax.tree.map(np.testing.assert_array_equal, plain, again)


@pytest.fixture(scope="module")
def simulated():
  clean = jnp.pad(jnp.ones((24, 24), jnp.float32), 4)
  n = 64
  cleans = jnp.broadcast_to(clean, (n, 32, 32))
  keys = jax.random.split(jax.random.key(1), n)
  im, bias, sigma = pairs.simulate_batch(keys, cleans, cleans > 0, 4, WIDE, "falloff")
  return np.asarray(cleans), np.asarray(im), np.asarray(bias), np.asarray(sigma)


def test_wide_corruption_leaves_some_images_clean_and_spans_the_field_range(simulated):
  clean, im, bias, sigma = simulated
  quiet = sigma == 0
  assert quiet.any() and not quiet.all()
  np.testing.assert_allclose(im[quiet], (clean * bias)[quiet], atol=1e-4)
  log_std = np.asarray([np.log(b[c > 0]).std() for b, c in zip(bias, clean)])
  assert (log_std < 1e-5).any() and log_std.max() > 0.2
  # σ is a fraction of the image maximum (1 here).
  assert sigma.max() <= 0.1 + 1e-6


def test_gfactor_map_scales_noise_exactly():
  """A constant noise map of 2 is the same as doubling σ (same key ⇒ same draws)."""
  clean = jnp.pad(jnp.ones((16, 16), jnp.float32), 8)
  p = physics.make_params(4, noise_sigma=0.05)
  a = physics.simulate(jax.random.key(2), clean, p, noise_map=jnp.full(clean.shape, 2.0))
  b = physics.simulate(jax.random.key(2), clean, p.replace(noise_sigma=jnp.float32(0.1)))
  np.testing.assert_allclose(np.asarray(a.image), np.asarray(b.image), rtol=1e-5, atol=1e-6)


def test_gfactor_map_is_at_least_one_and_flat_at_zero_amplitude():
  g = np.asarray(physics.noise.gfactor_map(jax.random.key(3), (32, 40), 1.5))
  assert g.min() >= 1.0 and g.max() > 1.5
  np.testing.assert_array_equal(np.asarray(physics.noise.gfactor_map(jax.random.key(3), (32, 40), 0.0)), 1.0)
