"""The sampler: K reverse steps of a schedule with an x0-predicting network (pure, jit-able)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from mri_jax.diffusion import schedules as S


def sample(schedule: S.Schedule, predict_x0: Callable[[jax.Array, jax.Array], jax.Array],
           y: jax.Array, key: jax.Array, *, k: int = 1, stochastic_eta: float = 0.0) -> jax.Array:
  """Runs K reverse steps from x_T and returns the final x0 estimate.

  Args:
    schedule: a `Schedule`.
    predict_x0: f(x_t, t) → x0 estimate, t a (B,) int array (the network with its conditioning
      bound, e.g. `lambda x, t: unet(x, t, cond)`).
    y: (B, ...) corrupted latent (restoration start; shape donor for the others).
    key: PRNG key (start noise and, when stochastic_eta > 0, per-step noise).
    k: number of network evaluations, 1 … T (static). K = 1 is a single pass.
    stochastic_eta: 0 deterministic (DDIM-like), 1 fully stochastic.
  """
  ts = S.sampling_steps(schedule, k)
  k_start, k_steps = jax.random.split(key)
  x = S.start(schedule, y, jax.random.normal(k_start, y.shape, y.dtype))
  keys = jax.random.split(k_steps, len(ts))
  x0 = x
  for i, t in enumerate(ts):
    t_prev = int(ts[i + 1]) if i + 1 < len(ts) else 0
    x0 = predict_x0(x, jnp.full((y.shape[0],), int(t), jnp.int32))
    noise = jax.random.normal(keys[i], y.shape, y.dtype) if stochastic_eta > 0 else None
    x = S.step(schedule, x, x0, y, int(t), t_prev, noise=noise, stochastic_eta=stochastic_eta)
  return x0
