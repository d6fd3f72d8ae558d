"""Test set-up: 8 forced CPU devices (before JAX initialises) so multi-device paths run without a GPU."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

assert jax.device_count() == 8, f"expected 8 forced CPU devices, got {jax.devices()}"
