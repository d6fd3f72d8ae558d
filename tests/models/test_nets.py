"""The NNX networks: shapes at any size, finite outputs and gradients."""

import jax
import jax.numpy as jnp
from flax import nnx

from mri_jax.models import Autoencoder, UNet


def test_networks_shapes_finite_gradients_and_any_size():
  ae = Autoencoder(channels=(8, 16, 32), latent=4, rngs=nnx.Rngs(0))
  unet = UNet(in_channels=4 + 9, out_channels=4, channels=(16, 32), emb=32, rngs=nnx.Rngs(1))
  for size in (32, 64):
    x = jax.random.uniform(jax.random.key(0), (2, size, size, 1))
    rec, mean, logvar = ae(x, jax.random.key(1))
    assert rec.shape == x.shape and mean.shape == (2, size // 4, size // 4, 4)
    cond = jnp.concatenate([mean, mean, mean[..., :1]], axis=-1)
    out = unet(mean, jnp.array([1, 5]), jnp.array([0.1, 0.9]), cond)
    assert out.shape == mean.shape and bool(jnp.all(jnp.isfinite(out)))

  def loss(model, x):
    rec, _, _ = model(x)
    return jnp.mean((rec - x) ** 2)

  grads = nnx.grad(loss)(ae, jnp.ones((1, 32, 32, 1)))
  leaves = jax.tree.leaves(grads)
  assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert any(float(jnp.abs(g).max()) > 0 for g in leaves)
