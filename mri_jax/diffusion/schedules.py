"""Noise schedules and samplers as pure functions (x0-prediction throughout).

Two families:

* **Restoration** (residual shifting, in the spirit of ResShift, Yue et al. 2023): the chain runs
  from the corrupted latent y to the clean latent x0,
    q(x_t | x0, y) = N(x0 + η_t (y − x0), κ² η_t I),   η_1 ≈ 0 < … < η_T ≈ 1,
  so x_T ≈ y + κ ε: sampling *starts from the corrupted input*, with a small bounded noise
  envelope κ√η_t, and can stop after K = 1 … T steps. With K = 1 the sample is the network's
  single x0 prediction from x_T.
* **From noise** (DDPM/DDIM): ᾱ_t from a linear or cosine β schedule, or the "reverse warm-up"
  schedule (β ≈ 0 for the first part of the chain, then linear), q(x_t | x0) = N(√ᾱ_t x0,
  (1 − ᾱ_t) I), sampling from x_T ~ N(0, I).

`Schedule` is a pytree (arrays are leaves; kind and length are static), so it can be passed into
jitted code. Step index t runs 1 … T; arrays are stored at index t − 1.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("restoration", "linear", "cosine", "reverse_warmup")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Schedule:
  """A diffusion schedule.

  Attributes:
    kind: one of KINDS (static).
    steps: T, the number of training steps (static).
    eta: (T,) shift η_t (restoration) — zeros for the others.
    kappa: noise envelope κ (restoration).
    alpha_bar: (T,) ᾱ_t (from-noise kinds) — ones for restoration.
  """

  eta: jax.Array
  alpha_bar: jax.Array
  kappa: float = dataclasses.field(metadata=dict(static=True), default=0.0)
  kind: str = dataclasses.field(metadata=dict(static=True), default="restoration")
  steps: int = dataclasses.field(metadata=dict(static=True), default=15)


def restoration_eta(steps: int, *, eta_min: float = 0.001, eta_max: float = 0.999,
                    power: float = 0.3) -> np.ndarray:
  """ResShift's η_t: √η_t grows geometrically in a warped time ((t−1)/(T−1))^power · (T−1)."""
  if steps == 1:
    return np.asarray([eta_max], np.float64)
  b0 = math.exp(math.log(eta_max / eta_min) / (2 * (steps - 1)))
  t = np.arange(1, steps + 1, dtype=np.float64)
  warped = ((t - 1) / (steps - 1)) ** power * (steps - 1)
  return eta_min * b0 ** (2 * warped)


def linear_betas(steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """DDPM's linear β schedule (scaled to `steps` as in the original 1000-step setting)."""
  scale = 1000.0 / steps
  return np.linspace(beta_start * scale, min(beta_end * scale, 0.999), steps)


def cosine_alpha_bar(steps: int, s: float = 0.008) -> np.ndarray:
  """Nichol & Dhariwal's cosine ᾱ_t (β clipped at 0.999)."""
  f = lambda t: np.cos((t / steps + s) / (1 + s) * np.pi / 2) ** 2
  t = np.arange(steps + 1, dtype=np.float64)
  betas = np.clip(1 - f(t[1:]) / f(t[:-1]), 0.0, 0.999)
  return np.cumprod(1 - betas)


def reverse_warmup_betas(steps: int, warmup: float = 0.3, beta_start: float = 1e-4,
                         beta_end: float = 0.02, beta_floor: float = 1e-6) -> np.ndarray:
  """β ≈ `beta_floor` for the first `warmup` fraction of the chain, then linear to beta_end."""
  n0 = int(round(warmup * steps))
  scale = 1000.0 / steps
  rest = np.linspace(beta_start * scale, min(beta_end * scale, 0.999), steps - n0)
  return np.concatenate([np.full(n0, beta_floor), rest])


def make_schedule(kind: str = "restoration", steps: int = 15, *, kappa: float = 0.5,
                  **kw) -> Schedule:
  """Builds a `Schedule` of `kind` with T = `steps` (extra keywords go to the η/β function)."""
  if kind not in KINDS:
    raise ValueError(f"schedule kind must be one of {KINDS}, got {kind!r}")
  if not 1 <= steps <= 1000:
    raise ValueError(f"steps must be in [1, 1000], got {steps}")
  if kind == "restoration":
    eta = restoration_eta(steps, **kw)
    alpha_bar = np.ones(steps)
  else:
    eta = np.zeros(steps)
    if kind == "cosine":
      alpha_bar = cosine_alpha_bar(steps, **kw)
    else:
      betas = linear_betas(steps, **kw) if kind == "linear" else reverse_warmup_betas(steps, **kw)
      alpha_bar = np.cumprod(1 - betas)
    kappa = 0.0
  return Schedule(eta=jnp.asarray(eta, jnp.float32), alpha_bar=jnp.asarray(alpha_bar, jnp.float32),
                  kappa=float(kappa), kind=kind, steps=int(steps))


def _at(values: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """values[t − 1] broadcast against an array of rank `ndim` with a leading batch axis."""
  v = values[jnp.asarray(t) - 1]
  return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, y: jax.Array | None, t: jax.Array,
             noise: jax.Array) -> jax.Array:
  """Draws x_t from q(x_t | x0[, y]) for a batch (t: (B,) ints in 1 … T)."""
  if schedule.kind == "restoration":
    eta = _at(schedule.eta, t, x0.ndim)
    return x0 + eta * (y - x0) + schedule.kappa * jnp.sqrt(eta) * noise
  ab = _at(schedule.alpha_bar, t, x0.ndim)
  return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * noise


def noise_level(schedule: Schedule, t: jax.Array) -> jax.Array:
  """The network's noise-level input at step t: η_t (restoration) or 1 − ᾱ_t (the others)."""
  if schedule.kind == "restoration":
    return schedule.eta[jnp.asarray(t) - 1]
  return 1.0 - schedule.alpha_bar[jnp.asarray(t) - 1]


def start(schedule: Schedule, y: jax.Array, noise: jax.Array) -> jax.Array:
  """x_T: the corrupted input plus κ√η_T noise (restoration) or pure noise (the others)."""
  if schedule.kind == "restoration":
    return y + schedule.kappa * jnp.sqrt(schedule.eta[-1]) * noise
  return noise


def sampling_steps(schedule: Schedule, k: int) -> np.ndarray:
  """K of the T training steps to visit, from T down (always starts at T; K = 1 ⇒ [T])."""
  if not 1 <= k <= schedule.steps:
    raise ValueError(f"sampling steps must be in [1, {schedule.steps}], got {k}")
  return np.unique(np.round(np.linspace(schedule.steps, 1, k)).astype(int))[::-1].copy()


def step(schedule: Schedule, x_t: jax.Array, x0_hat: jax.Array, y: jax.Array | None, t: int,
         t_prev: int, *, noise: jax.Array | None = None, stochastic_eta: float = 0.0) -> jax.Array:
  """One reverse step from t to t_prev (0 ⇒ return x0_hat), DDIM-style.

  Deterministic when `stochastic_eta` = 0 (the implied noise ε̂ is carried over); with 1 the fresh
  noise replaces it (ancestral-like). `noise` is needed when stochastic_eta > 0.
  """
  if t_prev == 0:
    return x0_hat
  if schedule.kind == "restoration":
    eta_t, eta_p = schedule.eta[t - 1], schedule.eta[t_prev - 1]
    k = schedule.kappa
    eps_hat = (x_t - x0_hat - eta_t * (y - x0_hat)) / jnp.maximum(k * jnp.sqrt(eta_t), 1e-8)
    mean = x0_hat + eta_p * (y - x0_hat)
    scale = k * jnp.sqrt(eta_p)
  else:
    ab_t, ab_p = schedule.alpha_bar[t - 1], schedule.alpha_bar[t_prev - 1]
    eps_hat = (x_t - jnp.sqrt(ab_t) * x0_hat) / jnp.sqrt(jnp.maximum(1.0 - ab_t, 1e-8))
    mean = jnp.sqrt(ab_p) * x0_hat
    scale = jnp.sqrt(1.0 - ab_p)
  if stochastic_eta > 0.0:
    mix = math.sqrt(1.0 - stochastic_eta ** 2)
    return mean + scale * (mix * eps_hat + stochastic_eta * noise)
  return mean + scale * eps_hat
