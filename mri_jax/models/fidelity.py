"""The fidelity path: pixel information of the inputs fed into the autoencoder's decoder.

Whatever the latent UNet does, a latent restorer's output passes through the decoder, so the
autoencoder's own reconstruction caps it (and on real scans that cap was below the noisy input).
As StableSR's controllable feature wrapping (CFW), a small encoder reads the *pixels* of the
network's inputs — the corrupted image, its N4 correction and the N4 log field, all at full
resolution — and at every decoder scale a zero-initialised fusion convolution adds its features
to the decoder's:

    h_s ← h_s + w · Conv_s([h_s, e_s])

with the fidelity weight w ∈ [0, 1] (w = 0: the plain decoder; w = 1: what training optimised).
The autoencoder stays frozen; the fidelity network is trained after the UNet (its own stage) with
L1 + SSIM on (restored latent, corrupted pixels) → clean pairs. Arrays are NHWC.

With `residual` (config `model.fidelity_residual`), the path also owns the output: from the fused
full-resolution features it predicts a correction Δ of the N4 image and a per-pixel gate g, and

    out = dec + w · g · (n4 + Δ − dec)

(dec: the decoder's image). Where the decoder cannot reproduce what the input shows (fine texture,
anatomy unlike the training data, an already clean scan) the output follows the N4 image with a
learned denoising correction, as a residual denoiser (DnCNN) does; where the input is only noise
(air) or wrong, the decoder's image. The gate starts low (g = sigmoid(−2) ≈ 0.12 with Δ = 0:
12 % of the way from the plain decoder's image towards the N4 image).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mri_jax.models.nets import Autoencoder, ResBlock, _groups, _up

PIXEL_INPUTS = 3  # corrupted, N4-corrected, N4 log field


def pixels(corrupted: jax.Array, n4: jax.Array, log_field: jax.Array) -> jax.Array:
  """The path's (B, X, Y, 3) input from the restorer's three (B, X, Y, 1) inputs."""
  return jnp.concatenate([corrupted, n4, log_field], axis=-1)


class FidelityNet(nnx.Module):
  """Pixel encoder and per-scale fusion convolutions for an autoencoder with `channels`."""

  def __init__(self, *, channels: Sequence[int], in_channels: int = PIXEL_INPUTS, residual: bool = False,
               rngs: nnx.Rngs):
    channels = tuple(channels)
    self.residual = residual
    self.enc_in = nnx.Conv(in_channels, channels[0], (3, 3), rngs=rngs)
    self.enc_blocks = nnx.List([ResBlock(c, c, rngs=rngs) for c in channels])
    self.enc_down = nnx.List([nnx.Conv(a, b, (3, 3), strides=(2, 2), rngs=rngs)
                              for a, b in zip(channels[:-1], channels[1:])])
    # One fusion per decoder scale, coarse to fine; zero-initialised so training starts at the
    # plain decoder.
    self.fuse = nnx.List([nnx.Conv(2 * c, c, (3, 3), kernel_init=nnx.initializers.zeros, rngs=rngs)
                          for c in channels[::-1]])
    if residual:  # the correction Δ (zero at the start) and the gate's logit (−2 at the start)
      c = channels[0]
      self.res_norm = nnx.GroupNorm(c, num_groups=_groups(c), rngs=rngs)
      self.res_delta = nnx.Conv(c, 1, (3, 3), kernel_init=nnx.initializers.zeros, rngs=rngs)
      self.res_gate = nnx.Conv(c, 1, (3, 3), kernel_init=nnx.initializers.zeros,
                               bias_init=nnx.initializers.constant(-2.0), rngs=rngs)

  def features(self, pixels: jax.Array) -> list[jax.Array]:
    """Features of (B, X, Y, 3) pixel inputs at each decoder scale, coarse to fine."""
    h = self.enc_in(pixels)
    feats = []
    for i, block in enumerate(self.enc_blocks):
      h = block(h)
      feats.append(h)
      if i < len(self.enc_down):
        h = self.enc_down[i](h)
    return feats[::-1]


def decode(ae: Autoencoder, fid: FidelityNet | None, z: jax.Array, pixels: jax.Array | None,
           weight: float | jax.Array = 1.0) -> jax.Array:
  """The autoencoder's decoder on latents z (B, X/f, Y/f, C) with the fidelity path's features of
  `pixels` (B, X, Y, 3) added at each scale with weight w (`fid` None or w = 0: the plain decoder)."""
  if fid is None or pixels is None:
    return ae.decode(z)
  feats = fid.features(pixels)
  h = ae.dec_in(z)
  for i, block in enumerate(ae.dec_blocks):
    h = block(h)
    h = h + weight * fid.fuse[i](jnp.concatenate([h, feats[i]], axis=-1))
    if i < len(ae.dec_up):
      h = ae.dec_up[i](_up(h))
  out = ae.dec_out(nnx.silu(ae.dec_norm(h)))
  if not fid.residual:
    return out
  r = nnx.silu(fid.res_norm(h))
  gate = jax.nn.sigmoid(fid.res_gate(r))
  return out + weight * gate * (pixels[..., 1:2] + fid.res_delta(r) - out)
