"""Test set-up: 8 forced CPU devices (before JAX initialises) so multi-device paths run without a GPU."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

assert jax.device_count() == 8, f"expected 8 forced CPU devices, got {jax.devices()}"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
  """The `tiny` mri_pairs config built once per test session: (data_dir, build summary)."""
  from mri_jax import workflows

  data_dir = tmp_path_factory.mktemp("tfds")
  return data_dir, workflows.build_data("tiny", data_dir=data_dir)
