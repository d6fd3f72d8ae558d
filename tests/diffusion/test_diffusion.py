"""Schedules' boundary values and monotonicity, and the K-step sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mri_jax import diffusion as D


@pytest.mark.parametrize("steps", [1, 4, 15, 50])
def test_restoration_schedule_boundaries_and_monotonicity(steps):
  s = D.make_schedule("restoration", steps, kappa=0.5)
  eta = np.asarray(s.eta)
  np.testing.assert_allclose(eta[-1], 0.999, rtol=1e-6)
  if steps > 1:
    np.testing.assert_allclose(eta[0], 0.001, rtol=1e-5)
    assert np.all(np.diff(eta) > 0)
  # x_T is the corrupted input up to the bounded noise envelope κ√η_T.
  y, x0 = jnp.ones((2, 3)), jnp.zeros((2, 3))
  xt = D.q_sample(s, x0, y, jnp.full((2,), steps), jnp.zeros((2, 3)))
  np.testing.assert_allclose(np.asarray(xt), 0.999, rtol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "cosine", "reverse_warmup"])
def test_noise_schedules_decrease_from_one_to_zero(kind):
  s = D.make_schedule(kind, 50)
  ab = np.asarray(s.alpha_bar)
  assert ab[0] > 0.95 and ab[-1] < 0.05
  assert np.all(np.diff(ab) <= 0)
  if kind == "reverse_warmup":
    assert np.all(ab[:15] > 0.9999)  # near-zero β for the first 30% of the chain


def test_sampling_steps_and_bad_arguments():
  s = D.make_schedule("restoration", 15)
  assert D.sampling_steps(s, 1).tolist() == [15]
  ts = D.sampling_steps(s, 5)
  assert ts[0] == 15 and ts[-1] == 1 and np.all(np.diff(ts) < 0)
  with pytest.raises(ValueError):
    D.sampling_steps(s, 16)
  with pytest.raises(ValueError):
    D.make_schedule("nope")


@pytest.mark.parametrize("kind", D.KINDS)
@pytest.mark.parametrize("k", [1, 4])
def test_sampler_with_a_perfect_predictor_returns_the_target(kind, k):
  s = D.make_schedule(kind, 10)
  x0 = jnp.linspace(-1, 1, 12).reshape(2, 6)
  y = x0 + 0.3
  out = jax.jit(lambda key: D.sample(s, lambda x, t: x0, y, key, k=k, stochastic_eta=0.5))(jax.random.key(0))
  np.testing.assert_allclose(np.asarray(out), np.asarray(x0), atol=1e-6)


def test_deterministic_restoration_step_is_consistent_with_q_sample():
  # If x_t is exactly on the forward path with noise ε, a deterministic step lands on the path at
  # t_prev with the same ε.
  s = D.make_schedule("restoration", 15, kappa=0.5)
  key = jax.random.key(1)
  x0 = jax.random.normal(key, (2, 5))
  y = x0 + 1.0
  eps = jax.random.normal(jax.random.key(2), (2, 5))
  xt = D.q_sample(s, x0, y, jnp.full((2,), 9), eps)
  prev = D.step(s, xt, x0, y, 9, 4)
  np.testing.assert_allclose(np.asarray(prev), np.asarray(D.q_sample(s, x0, y, jnp.full((2,), 4), eps)),
                             atol=1e-5)
