"""Flax NNX networks: a KL autoencoder for single-channel MR images and a conditional UNet.

Arrays are NHWC (batch, x, y, channels). Both networks work on any spatial size divisible by
their total downsampling (2 ** levels); `mri_jax.restore` pads to that multiple.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _groups(c: int) -> int:
  """GroupNorm's groups for c channels: up to 8, at least 2 channels each. With one channel per
  group (instance norm) a narrow network cannot carry an image's level and contrast through the
  norm (an 8-channel autoencoder trained so stalls near 14 dB)."""
  for g in (8, 4, 2):
    if c % g == 0 and c // g >= 2:
      return g
  return 1


class ResBlock(nnx.Module):
  """GroupNorm → SiLU → conv, twice, with an optional embedding added in between; residual."""

  def __init__(self, cin: int, cout: int, *, emb: int | None = None, rngs: nnx.Rngs):
    self.n1 = nnx.GroupNorm(cin, num_groups=_groups(cin), rngs=rngs)
    self.c1 = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
    self.n2 = nnx.GroupNorm(cout, num_groups=_groups(cout), rngs=rngs)
    self.c2 = nnx.Conv(cout, cout, (3, 3), rngs=rngs)
    self.emb = nnx.Linear(emb, cout, rngs=rngs) if emb else None
    self.skip = nnx.Conv(cin, cout, (1, 1), rngs=rngs) if cin != cout else None

  def __call__(self, x, e=None):
    h = self.c1(nnx.silu(self.n1(x)))
    if self.emb is not None:
      h = h + self.emb(e)[:, None, None, :]
    h = self.c2(nnx.silu(self.n2(h)))
    return h + (self.skip(x) if self.skip is not None else x)


def _up(x):
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")


class Autoencoder(nnx.Module):
  """KL-regularised conv autoencoder; downsampling 2 ** (len(channels) − 1)."""

  def __init__(self, *, channels: Sequence[int] = (32, 64, 128), latent: int = 4, rngs: nnx.Rngs):
    channels = tuple(channels)
    self.factor = 2 ** (len(channels) - 1)
    self.latent = latent
    self.enc_in = nnx.Conv(1, channels[0], (3, 3), rngs=rngs)
    self.enc_blocks = nnx.List([ResBlock(c, c, rngs=rngs) for c in channels])
    self.enc_down = nnx.List([nnx.Conv(a, b, (3, 3), strides=(2, 2), rngs=rngs)
                              for a, b in zip(channels[:-1], channels[1:])])
    self.enc_out = nnx.Conv(channels[-1], 2 * latent, (1, 1), rngs=rngs)
    rev = channels[::-1]
    self.dec_in = nnx.Conv(latent, rev[0], (3, 3), rngs=rngs)
    self.dec_blocks = nnx.List([ResBlock(c, c, rngs=rngs) for c in rev])
    self.dec_up = nnx.List([nnx.Conv(a, b, (3, 3), rngs=rngs) for a, b in zip(rev[:-1], rev[1:])])
    self.dec_norm = nnx.GroupNorm(rev[-1], num_groups=_groups(rev[-1]), rngs=rngs)
    self.dec_out = nnx.Conv(rev[-1], 1, (3, 3), rngs=rngs)

  def encode(self, x):
    """(B, X, Y, 1) image → latent mean and log-variance (B, X/f, Y/f, latent)."""
    h = self.enc_in(x)
    for i, block in enumerate(self.enc_blocks):
      h = block(h)
      if i < len(self.enc_down):
        h = self.enc_down[i](h)
    mean, logvar = jnp.split(self.enc_out(h), 2, axis=-1)
    return mean, jnp.clip(logvar, -20.0, 10.0)

  def decode(self, z):
    h = self.dec_in(z)
    for i, block in enumerate(self.dec_blocks):
      h = block(h)
      if i < len(self.dec_up):
        h = self.dec_up[i](_up(h))
    return self.dec_out(nnx.silu(self.dec_norm(h)))

  def __call__(self, x, key=None):
    """Reconstruction (sampling the posterior when `key` is given), mean, log-variance."""
    mean, logvar = self.encode(x)
    z = mean if key is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    return self.decode(z), mean, logvar


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal embedding of (B,) values."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class UNet(nnx.Module):
  """Conditional UNet: input = concat(x_t, conditioning); embeddings of step t and noise level."""

  def __init__(self, *, in_channels: int, out_channels: int, channels: Sequence[int] = (64, 128, 256),
               emb: int = 128, rngs: nnx.Rngs):
    channels = tuple(channels)
    self.emb_dim = emb
    self.factor = 2 ** (len(channels) - 1)
    self.emb1 = nnx.Linear(2 * emb, emb, rngs=rngs)
    self.emb2 = nnx.Linear(emb, emb, rngs=rngs)
    self.conv_in = nnx.Conv(in_channels, channels[0], (3, 3), rngs=rngs)
    self.down = nnx.List([ResBlock(c, c, emb=emb, rngs=rngs) for c in channels])
    self.downsample = nnx.List([nnx.Conv(a, b, (3, 3), strides=(2, 2), rngs=rngs)
                                for a, b in zip(channels[:-1], channels[1:])])
    self.mid = ResBlock(channels[-1], channels[-1], emb=emb, rngs=rngs)
    rev = channels[::-1]
    self.up = nnx.List([ResBlock(2 * c, c, emb=emb, rngs=rngs) for c in rev])
    self.upsample = nnx.List([nnx.Conv(a, b, (3, 3), rngs=rngs) for a, b in zip(rev[:-1], rev[1:])])
    self.norm_out = nnx.GroupNorm(channels[0], num_groups=_groups(channels[0]), rngs=rngs)
    self.conv_out = nnx.Conv(channels[0], out_channels, (3, 3), rngs=rngs)

  def __call__(self, x, t, level, cond=None):
    """x: (B, X, Y, C); t: (B,) step; level: (B,) noise level in [0, 1]; cond: (B, X, Y, Cc)."""
    e = jnp.concatenate([timestep_embedding(t, self.emb_dim),
                         timestep_embedding(1000.0 * level, self.emb_dim)], axis=-1)
    e = self.emb2(nnx.silu(self.emb1(e)))
    h = self.conv_in(x if cond is None else jnp.concatenate([x, cond], axis=-1))
    skips = []
    for i, block in enumerate(self.down):
      h = block(h, e)
      skips.append(h)
      if i < len(self.downsample):
        h = self.downsample[i](h)
    h = self.mid(h, e)
    for i, block in enumerate(self.up):
      h = block(jnp.concatenate([h, skips.pop()], axis=-1), e)
      if i < len(self.upsample):
        h = self.upsample[i](_up(h))
    return self.conv_out(nnx.silu(self.norm_out(h)))
