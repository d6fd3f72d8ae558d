"""Diffusion schedules (restoration / DDPM / cosine / reverse warm-up) and the K-step sampler."""

from mri_jax.diffusion.sampler import sample
from mri_jax.diffusion.schedules import KINDS, Schedule, make_schedule, noise_level, q_sample, sampling_steps, start, step

__all__ = ["KINDS", "Schedule", "make_schedule", "noise_level", "q_sample", "sample", "sampling_steps", "start", "step"]
