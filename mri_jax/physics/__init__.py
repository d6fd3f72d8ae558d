"""Coil-physics simulator: pure jax.numpy, jit/vmap/grad-compatible, 2-D and 3-D.

Typical use::

    from mri_jax import physics
    params = physics.make_params(8, noise_sigma=0.04)
    out = jax.jit(physics.simulate)(jax.random.key(0), clean, params)
    out.image, out.bias
"""

from mri_jax.physics.bias import legendre_field, polynomial_field, poly_exponents, receive_field, transmit_field
from mri_jax.physics.coils import biot_savart_sensitivity, coil_maps, falloff_sensitivity, loop_geometry
from mri_jax.physics.combine import roemer, roemer_gain, rss
from mri_jax.physics.noise import add_noise, coil_covariance, complex_noise
from mri_jax.physics.params import SimulationParams, make_params, n_poly_terms
from mri_jax.physics.sampling import sample_params
from mri_jax.physics.simulate import Corrupted, reference_intensity, simulate

__all__ = [
    "Corrupted", "SimulationParams", "add_noise", "biot_savart_sensitivity", "coil_covariance",
    "coil_maps", "complex_noise", "falloff_sensitivity", "legendre_field", "loop_geometry",
    "make_params", "n_poly_terms", "poly_exponents", "polynomial_field", "receive_field",
    "reference_intensity", "roemer", "roemer_gain", "rss", "sample_params", "simulate",
    "transmit_field",
]
