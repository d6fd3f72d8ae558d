"""The persistent compilation cache (`mri_jax.compile_cache`): where it lives, that later processes
load the traced programs instead of tracing them again, that torn files are replaced, that two
processes can share it, and that cached and uncached restores give the same image."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np

from mri_jax import compile_cache
from tests.conftest import write_nifti


def test_resolve_order(monkeypatch, tmp_path):
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.resolve() == tmp_path / "xdg" / "mri_jax" / "xla"
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
  assert compile_cache.resolve() == tmp_path / "env"
  assert compile_cache.resolve(tmp_path / "arg") == tmp_path / "arg"
  for off in ("off", "none", "", "OFF"):
    monkeypatch.setenv(compile_cache.ENV, off)
    assert compile_cache.resolve() is None


_SCRIPT = """
import json, sys
from mri_jax import compile_cache
compile_cache.enable()
import jax, jax.numpy as jnp
traced = []
def f(x, y):
  traced.append(1)
  return {"s": jnp.sin(x) @ y, "n": jnp.linalg.norm(x)}
out = compile_cache.cached_call("test-fn", f, jnp.arange(12.0).reshape(3, 4), jnp.ones((4, 2)))
out2 = compile_cache.cached_call("test-fn", f, jnp.arange(12.0).reshape(3, 4), jnp.ones((4, 2)))
print(json.dumps({"traced": len(traced), "s": out["s"].tolist(), "n": float(out["n"]), "same": bool((out["s"] == out2["s"]).all())}))
"""


def _run(cache: str):
  env = {**os.environ, compile_cache.ENV: cache}
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, encoding="utf-8", env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_later_processes_load_the_traced_program(tmp_path):
  cache = tmp_path / "cache"
  first = _run(str(cache))
  programs = list((cache / "programs").glob("test_fn-*.bin"))
  assert first["traced"] == 1 and first["same"] and len(programs) == 1
  second = _run(str(cache))
  assert second["traced"] == 0  # loaded from disk, not traced again
  assert second["s"] == first["s"] and second["n"] == first["n"]
  programs[0].write_bytes(b"torn")  # a damaged file is traced again and replaced
  third = _run(str(cache))
  assert third["traced"] == 1 and third["s"] == first["s"] and programs[0].stat().st_size > 100
  off = _run("off")
  assert off["traced"] == 1 and off["s"] == first["s"]


def test_unwritable_cache_folder_is_one_line(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  env = {**os.environ, compile_cache.ENV: str(blocker / "cache")}
  src = write_nifti(tmp_path / "a.nii.gz", np.random.default_rng(0).random((16, 16)) + 1)
  proc = subprocess.run([sys.executable, "-m", "mri_jax", "restore", str(src), str(tmp_path / "o.nii.gz")],
                        capture_output=True, text=True, encoding="utf-8", env=env, timeout=300)
  assert proc.returncode == 2 and "not writable" in proc.stderr and "MRI_JAX_CACHE_DIR" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.nii.gz").exists()


def test_two_processes_share_a_cache_and_match_an_uncached_restore(tmp_path):
  from mri_jax.data import pairs

  t = np.asarray(pairs.template_tissues(4)[1])
  z = int(np.argmax(t.sum(axis=(0, 1))))
  img = np.abs(100 * t[..., z] + 5 + np.random.default_rng(1).normal(0, 3, t.shape[:2]))
  src = write_nifti(tmp_path / "in.nii.gz", img)
  cache = tmp_path / "shared"

  def start(name, cache_dir):
    env = {**os.environ, compile_cache.ENV: str(cache_dir)}
    return subprocess.Popen([sys.executable, "-m", "mri_jax", "restore", str(src), str(tmp_path / name), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env)

  procs = [start("a.nii.gz", cache), start("b.nii.gz", cache)]  # at the same time, one empty cache
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
  after = start("c.nii.gz", cache)  # a later process, everything cached
  off = start("d.nii.gz", "off")
  for p in (after, off):
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
  outs = [np.asarray(nib.load(str(tmp_path / f"{n}.nii.gz")).dataobj) for n in "abcd"]
  for o in outs[1:]:
    np.testing.assert_array_equal(o, outs[0])
  assert list((cache / "programs").glob("restorer_*.bin")) and list((cache / "values").glob("*.pkl"))
