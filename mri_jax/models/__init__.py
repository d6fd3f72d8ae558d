"""Flax NNX networks of the restorer: the KL autoencoder and the conditional UNet."""

from mri_jax.models.nets import Autoencoder, ResBlock, UNet, timestep_embedding

__all__ = ["Autoencoder", "ResBlock", "UNet", "timestep_embedding"]
