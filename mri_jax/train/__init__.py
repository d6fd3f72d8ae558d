"""Training of the restorer (autoencoder, then latent diffusion), data parallel over a mesh."""

from mri_jax.train.trainer import build_models, init_state, make_steps, restore_batch, train

__all__ = ["build_models", "init_state", "make_steps", "restore_batch", "train"]
