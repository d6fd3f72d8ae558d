"""Test set-up and shared helpers.

8 forced CPU devices (before JAX initialises) so multi-device paths run without a GPU; the `tiny`
dataset and one short training run built once per session; helpers to write NIfTIs and call the
CLI.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

assert jax.device_count() == 8, f"expected 8 forced CPU devices, got {jax.devices()}"

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def write_nifti(path, data, affine=None, zooms=None):
  """Writes `data` as a float32 NIfTI (2 mm diagonal affine unless given); returns the path."""
  img = nib.Nifti1Image(np.asarray(data, np.float32), np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine)
  img.header["descrip"] = b"test input"
  if zooms is not None:
    img.header.set_zooms(zooms)
  nib.save(img, str(path))
  return path


def run_cli(argv, capsys):
  """(exit code, stdout, stderr) of `mri-jax ARGV` run in-process."""
  from mri_jax import cli

  code = cli.main(argv)
  cap = capsys.readouterr()
  return code, cap.out, cap.err


def tiny_config(data_dir, **train_overrides):
  """configs/tiny.py on `data_dir`, 6 + 6 steps, logging every step, checkpoints every 4."""
  from mri_jax import config

  c = config.load("configs/tiny.py")
  c.data.data_dir = str(data_dir)
  c.train.ae_steps, c.train.diffusion_steps = 6, 6
  c.train.log_every, c.train.checkpoint_every = 1, 4
  c.train.eval_every = 0  # validation is exercised by `full_run` only
  for k, v in train_overrides.items():
    c.train[k] = v
  return c


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
  """The `tiny` mri_pairs config built once per test session: (data_dir, build summary)."""
  from mri_jax.data import build

  data_dir = tmp_path_factory.mktemp("tfds")
  return data_dir, build.build_data("tiny", data_dir=data_dir)


@pytest.fixture(scope="session")
def full_run(tiny_dataset, tmp_path_factory):
  """One uninterrupted tiny training run with validation (trainer, ablations, export tests)."""
  from mri_jax import train

  data_dir, _ = tiny_dataset
  workdir = tmp_path_factory.mktemp("run_full")
  out = train.train(tiny_config(data_dir, eval_every=6), workdir, log=lambda m: None)
  out["workdir"] = workdir
  return out
