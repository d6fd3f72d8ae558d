"""The GPU recipe (benchmarks/gpu_recipe.py) runs where only jax, flax, optax, orbax, chex, numpy
and scipy are installed, and its carried anatomy is the dataset build's.

The full CPU smoke run (compiles; ≈ 2–4 min on 2 cores) is not a test:
  python benchmarks/gpu_recipe.py --tiny --out /tmp/gpu_tiny
"""

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_recipe.py"
# What a GPU machine without a registry lacks (STACK_NOTES), plus this checkout's own install:
# the recipe must find mri_jax and configs in the working tree, ml_collections and tqdm in its wheels.
ABSENT = ("grain", "tensorflow", "array_record", "nibabel", "simpleitk", "nilearn", "tensorboard", "matplotlib",
          "mpl_toolkits", "ml_collections", "tqdm", "dipy", "pydicom", "heudiconv", "mri_jax", "__editable__")


def _bare_site(tmp: Path) -> Path:
  """A folder of links to this environment's packages without the ABSENT ones (and no .pth files)."""
  site = tmp / "site"
  site.mkdir()
  for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
    name = entry.name.lower()
    if not name.startswith(ABSENT) and not name.endswith(".pth"):
      (site / entry.name).symlink_to(entry.resolve())
  return site


def test_recipe_wiring_without_the_missing_packages(tmp_path):
  """`--check` traces the on-device batch and the trainer's steps of the tiny config's four stages (nothing compiled) in a
  Python that cannot import grain / tfds / nibabel / nilearn / ml_collections / tqdm / … ."""
  env = {**os.environ, "PYTHONPATH": str(_bare_site(tmp_path)), "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-S", str(SCRIPT), "--tiny", "--check"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert sorted(w.split("-")[0] for w in out["carried_wheels"]) == ["ml_collections", "tqdm"]
  assert out["modules"] == []
  assert set(out["draw"]) == {"clean", "corrupted", "n4_corrected", "n4_log_field", "mask"}
  assert all(shape == [2, 8, 48, 48] and dtype == "float32" for shape, dtype in out["draw"].values())
  assert out["metrics"]["fidelity"] == out["metrics"]["joint"] == ["l1", "loss", "ssim"]


@pytest.mark.skipif(importlib.util.find_spec("nilearn") is None, reason="the reference maps come from nilearn")
def test_carried_anatomy_is_the_builds():
  """Head scenes on the GPU start from the same template slices as `mri_pairs/mixed128`."""
  from mri_jax.data import pairs

  spec = importlib.util.spec_from_file_location("gpu_recipe", SCRIPT)
  recipe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(recipe)
  carried = recipe.template_slices(recipe.ASSETS / "anatomy.npz", 2, 128)
  np.testing.assert_array_equal(carried, pairs._template_slices(2, 128))
