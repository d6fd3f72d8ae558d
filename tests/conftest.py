"""Test set-up and shared helpers.

8 forced CPU devices (before JAX initialises) so multi-device paths run without a GPU; LLVM at
optimisation level 0; a fresh compilation cache for the session (MRI_JAX_CACHE_DIR, unless set),
on from the first test and shared by pytest-xdist's workers; the `tiny` dataset and one short
training run built once per session; helpers to write NIfTIs and call the CLI.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# One fresh compilation cache for the session (subprocesses inherit it). The process that starts
# pytest makes it; pytest-xdist's workers inherit the variable, so they share the cache (a program
# one worker compiled, the other loads), and only the starting process removes it.
if "MRI_JAX_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="mri_jax_test_cache_")
  atexit.register(shutil.rmtree, _CACHE, True)
  os.environ["MRI_JAX_CACHE_DIR"] = _CACHE

# LLVM at optimisation level 0 unless asked otherwise: most tests are bound by compiling, not by
# running (the network-shapes test and test_transforms.py took 30 % less time). The outputs stay
# within the tests' tolerances, the shipped model's reference outputs included. Benchmarks never
# run with it.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

assert jax.device_count() == 8, f"expected 8 forced CPU devices, got {jax.devices()}"

from mri_jax import compile_cache  # noqa: E402

# On for every test, not only after the first CLI call: a program that an earlier test (or the
# other worker) compiled is loaded, not compiled again (the training tests build the same steps in
# several runs: 335 → 290 s for five of them). Only programs that took ≥ 1 s to compile are kept;
# writing every small one cost more than it saved.
if compile_cache.enable() is not None:
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

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
def tiny_dataset(tmp_path_factory, worker_id):
  """The `tiny` mri_pairs config built once per test session: (data_dir, build summary). Under
  pytest-xdist the workers share one build (the first builds it under a file lock, the others
  read it; the build is seeded, so it is the same data either way)."""
  import json

  from mri_jax.data import build

  if worker_id == "master":
    data_dir = tmp_path_factory.mktemp("tfds")
    return data_dir, build.build_data("tiny", data_dir=data_dir)
  from filelock import FileLock

  root = tmp_path_factory.getbasetemp().parent  # shared by the session's workers
  data_dir, done = root / "tfds_shared", root / "tfds_shared.json"
  with FileLock(str(root / "tfds_shared.lock")):
    if not done.is_file():
      summary = build.build_data("tiny", data_dir=data_dir)
      done.write_text(json.dumps(summary, default=str))
  return data_dir, json.loads(done.read_text())


@pytest.fixture(scope="session")
def full_run(tiny_dataset, tmp_path_factory):
  """One uninterrupted tiny training run with validation (trainer, ablations, export tests). Its
  tests carry `@pytest.mark.xdist_group("full_run")` (with `--dist loadgroup` in pyproject's
  addopts) so pytest-xdist runs them on one worker and the run is trained once."""
  from mri_jax import train

  data_dir, _ = tiny_dataset
  workdir = tmp_path_factory.mktemp("run_full")
  out = train.train(tiny_config(data_dir, eval_every=6), workdir, log=lambda m: None)
  out["workdir"] = workdir
  return out


def write_dicom_series(folder, vol, *, spacing=(0.9, 1.1, 3.0), direction=None, origin=(-20.0, 30.0, 15.0),
                       uid="1.2.826.0.1.3680043.2.1125.1", number=3, description="T1 test", repeat_position=False,
                       image_type="ORIGINAL\\PRIMARY\\M\\ND"):
  """Writes an (X, Y, Z) int16 volume as a DICOM MR series, one file per slice, with the tags
  a scanner writes (positions, orientation, spacing, UIDs; enough for dcm2niix to group it).
  `direction`: 3×3 ITK direction (LPS; default an oblique rotation). Returns the folder."""
  import locale

  saved = locale.setlocale(locale.LC_ALL)  # GDCM's DICOM writer sets the C locale: keep ours
  try:
    return _write_dicom_series(folder, vol, spacing, direction, origin, uid, number, description, repeat_position,
                               image_type)
  finally:
    locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_series(folder, vol, spacing, direction, origin, uid, number, description, repeat_position,
                        image_type):
  import SimpleITK as sitk

  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  if direction is None:
    a, b = 0.3, 0.2
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    direction = rz @ rx
  d = np.asarray(direction, float).reshape(3, 3)
  img = sitk.GetImageFromArray(np.asarray(vol).transpose(2, 1, 0).astype(np.int16))
  img.SetSpacing(tuple(float(s) for s in spacing))
  img.SetDirection(tuple(d.ravel()))
  img.SetOrigin(tuple(float(o) for o in origin))
  writer = sitk.ImageFileWriter()
  writer.KeepOriginalImageUIDOn()
  for k in range(vol.shape[2]):
    sl = img[:, :, k]
    pos = img.TransformIndexToPhysicalPoint((0, 0, 0 if repeat_position and k == 1 else k))
    tags = {"0008|0060": "MR", "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0008|0018": f"{uid}.{k + 1}",
            "0008|0008": image_type, "0008|0070": "mri_jax test", "0008|103e": description,
            "0008|0020": "20260101", "0008|0021": "20260101", "0008|0030": "120000", "0008|0031": "120000",
            "0008|0032": "120000", "0010|0010": "Phantom^Test", "0010|0020": "0001", "0018|5100": "HFS",
            "0018|0050": f"{spacing[2]:.6f}", "0018|0080": "500", "0018|0081": "10",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.9", "0020|000e": uid, "0020|0011": str(number),
            "0020|0012": "1", "0020|0013": str(k + 1), "0020|0052": "1.2.826.0.1.3680043.2.1125.7",
            "0020|0032": "\\".join(f"{p:.6f}" for p in pos),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*d[:, 0], *d[:, 1])),
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}"}
    for tag, value in tags.items():
      sl.SetMetaData(tag, value)
    writer.SetFileName(str(folder / f"{uid[-6:]}_{k:03d}.dcm"))
    writer.Execute(sl)
  return folder
