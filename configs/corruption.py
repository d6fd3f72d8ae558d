"""Corruption ranges for training data: the simulator's parameters are drawn from these.

Used by `mri_jax.physics.sample_params(key, get_config())`; later configs (data builder, training)
import it as their `corruption` group. Ranges are (low, high), uniform; numbers are fixed values.

Try it:
  python -c "import jax; from configs import corruption; from mri_jax import physics; \
print(physics.sample_params(jax.random.key(0), corruption.get_config()))"
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the corruption config; `arg` = 'single_coil' gives the Rician (1-coil) variant."""
  c = ml_collections.ConfigDict()
  c.n_coils = 8
  c.n_rings = 1
  c.coil_model = "biot_savart"
  c.combine = "rss"
  c.noise_domain = "image"
  c.poly_order = 3
  c.coarse_size = 32
  # σ per real/imaginary component, fraction of the reference intensity (image max, or mean WM).
  c.noise_sigma = (0.01, 0.08)
  c.coil_size = (0.85, 1.15)
  c.coil_distance = (1.0, 1.3)
  c.coil_jitter_azimuth = 0.1
  c.coil_jitter_z = 0.05
  c.falloff_d0 = (0.2, 0.5)
  c.falloff_power = (1.0, 2.0)
  c.receive_strength = (0.3, 1.0)
  c.slice_z = (-0.3, 0.3)
  c.b1_amplitude = (0.0, 0.4)
  c.b1_width = (0.4, 0.9)
  c.b1_center = 0.15
  c.poly_coefficient = 0.3
  c.noise_correlation = (0.0, 0.4)
  if arg == "single_coil":
    c.n_coils = 1
    c.noise_correlation = (0.0, 0.0)
  elif arg not in (None, ""):
    raise ValueError(f"unknown corruption variant {arg!r} (known: single_coil)")
  return c
