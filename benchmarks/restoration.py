"""Restoration quality and speed: the restorer vs N4, N4 + NLM and the oracle, same run, same CPU.

Run:  python benchmarks/restoration.py [--data-dir DATA] [--checkpoint DIR | --fast] [--slices 64] [--steps 4]
      [--real-set full|dipy|none] [--real-slices 8] [--faithfulness] [--no-speed] [--out bench_out]
      [--copy-montage benchmarks/real_scans.png]

Quality: `mri-jax evaluate` (held-out synthetic subjects of mri_pairs/slices128 when --data-dir is
given, and the real-scan validation set: seven groups of real scans shipped in dipy, nibabel and
heudiconv wheels, each corrupted by the simulator and by an independent NumPy model; see
`mri_jax.evaluate` and `mri_jax.realscans`). The real-scan table in RESULTS.md comes from
  python benchmarks/restoration.py --real-set full --real-slices 8 --no-speed --out bench_real \
      --copy-montage benchmarks/real_scans.png
Speed (best of 3 after compilation, same process; the speed-only run is
  python benchmarks/restoration.py --real-set none --no-quality):
- one 256² slice (the MNI152 1 mm axial mid-slice, corrupted): restorer (JAX N4 + K = 1) vs
  SimpleITK N4 (shrink 4) + dipy Rician NLM, and vs SimpleITK N4 alone; the network alone;
- one 3-D volume (MNI152 at 1 mm, 197×233×189: one 3-D N4, the slices with anatomy through the
  network) vs SimpleITK N4 (shrink 4) in 3-D;
- the CLI in fresh processes with a fresh compilation cache: the first call, later calls, and 20
  files of 256² in one `mri-jax restore ... --output-dir` command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np


def best_of(fn, n=3):
  fn()
  times = []
  for _ in range(n):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def _test_images():
  """The corrupted MNI152 1 mm volume (197×233×189) and 256² slices of it (the middle one first)."""
  from mri_jax import file_jobs
  from mri_jax.data import anatomy

  a = anatomy.load_mni152()
  settings = file_jobs.corruption_settings(coils=8, noise=0.03)
  vol = np.asarray(file_jobs.simulate_array(a.t1, seed=0, settings=settings, spacing=(1.0, 1.0, 1.0),
                                            reference_mask=a.mask).image)
  mid = vol.shape[-1] // 2
  return vol, [frame_slice(vol, z) for z in [mid] + [mid + d for d in range(-40, 40, 4) if d]]


def frame_slice(vol: np.ndarray, z: int) -> np.ndarray:
  """Axial slice z of `vol` in a 256² frame (zeros beyond the volume)."""
  sl = np.zeros((256, 256), np.float32)
  sl[:vol.shape[0], :vol.shape[1]] = vol[:256, :256, z]
  return sl


def network_seconds(model, sl: np.ndarray, n4_res, n: int = 3) -> tuple[float, float]:
  """(first call, best of `n` after it) of the network alone on slice `sl`, with the inputs it gets
  in restore: the corrupted slice, its N4 image and N4 field `n4_res` (distinct arrays: with the N4
  image = the input, XLA would share the two encoder passes)."""
  import jax
  import jax.numpy as jnp

  from mri_jax import restore

  run = restore._make_fn(model, model.default_steps)
  scale = sl[sl > 0].mean()
  x = jnp.asarray(sl[None] / scale)
  x_n4 = jnp.asarray(np.asarray(n4_res.corrected).reshape(x.shape) / scale)
  log_field = jnp.asarray(np.asarray(n4_res.log_field).reshape(x.shape))
  call = lambda: jax.block_until_ready(run(model.params, x, x_n4, log_field, jax.random.key(0)))  # noqa: E731
  t = time.perf_counter()
  call()
  first = time.perf_counter() - t
  return first, best_of(call, n=n)


def restored_slice_count(res) -> int:
  """How many slices of a restored volume went through the network (restore's anatomy rule)."""
  from mri_jax import restore

  counts = res.mask.reshape(-1, res.mask.shape[-1]).sum(axis=0)
  return int(restore.anatomy_slices(counts).sum())


def speed(model, log=print) -> dict:
  """In-process timings (best of 3 after compilation; the volume once after a warm-up)."""
  from mri_jax import evaluate, n4, restore

  vol, slices = _test_images()
  sl = slices[0]
  log("speed: one 256² slice...")
  t_restore = best_of(lambda: restore.restore_array(sl, model))
  t_n4 = best_of(lambda: n4.n4_sitk(sl, settings=n4.N4Settings(shrink=4)))
  n4_res = n4.n4_sitk(sl, settings=n4.N4Settings(shrink=4))
  n4_img = np.asarray(n4_res.corrected)
  _, t_net = network_seconds(model, sl, n4_res)
  t_nlm = best_of(lambda: evaluate.nlm_dipy(n4_img[None]))  # a correct 2-D call costs 3× the depth-1 one (evaluate.nlm_dipy)
  t_nlm_sk = best_of(lambda: evaluate.nlm_skimage(n4_img[None]))
  log("speed: one 3-D volume (197×233×189)...")
  res = restore.restore_array(vol, model)  # warm-up: compiles the volume's shapes
  t_vol = best_of(lambda: restore.restore_array(vol, model), n=1)
  t_vol_n4 = best_of(lambda: n4.n4_sitk(vol, settings=n4.N4Settings(shrink=4)), n=1)
  restored_slices = restored_slice_count(res)
  return {"slice_restorer_s": t_restore, "slice_network_s": t_net, "slice_sitk_n4_s": t_n4, "slice_dipy_nlm_s": t_nlm,
          "slice_skimage_nlm_s": t_nlm_sk, "slice_speedup_vs_n4_nlm": (t_n4 + t_nlm) / t_restore,
          "slice_speedup_vs_n4_nlm_skimage": (t_n4 + t_nlm_sk) / t_restore, "slice_speedup_vs_n4": t_n4 / t_restore,
          "volume_restorer_s": t_vol, "volume_sitk_n4_s": t_vol_n4, "volume_speedup_vs_n4": t_vol_n4 / t_vol,
          "volume_restored_slices": restored_slices, "volume_seconds": res.seconds}


def cli_speed(workdir, log=print, options=()) -> dict:
  """Wall time of `mri-jax restore` in fresh processes with a fresh compilation cache: the first
  call (compiles), three later calls on the same 256² slice (best), and 20 files of 256² in one
  command (warm cache). `options`: more `restore` options (e.g. `--fast`)."""
  import subprocess
  import sys
  import tempfile

  import nibabel as nib

  _, slices = _test_images()
  os.makedirs(workdir, exist_ok=True)
  work = Path(tempfile.mkdtemp(prefix="restore_cli_", dir=workdir))
  ins = work / "in"
  ins.mkdir()
  for i, sl in enumerate(slices):
    nib.save(nib.Nifti1Image(sl, np.eye(4)), str(ins / f"slice{i:02d}.nii.gz"))
  env = {**os.environ, "MRI_JAX_CACHE_DIR": str(work / "cache")}

  def wall(argv):
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mri_jax", "restore", *argv, *options, "--quiet", "--overwrite"],
                          capture_output=True, text=True, encoding="utf-8", env=env)
    if proc.returncode != 0:
      raise RuntimeError(proc.stderr)
    return time.perf_counter() - t

  one = [str(ins / "slice00.nii.gz"), str(work / "out.nii.gz")]
  log("speed: CLI, first call with an empty cache...")
  first = wall(one)
  later = [wall(one) for _ in range(3)]
  log("speed: CLI, 20 files in one command...")
  many = wall([*sorted(str(p) for p in ins.glob("*.nii.gz"))[:20], "--output-dir", str(work / "out")])
  return {"cli_first_s": first, "cli_later_s": min(later), "cli_later_all_s": later, "cli_20_files_s": many}


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data-dir", help="TFDS data directory with mri_pairs (omit: real images only)")
  ap.add_argument("--checkpoint")
  ap.add_argument("--fast", action="store_true", help="the shipped fast weights (restore --fast), CLI timings included")
  ap.add_argument("--slices", type=int, default=64)
  ap.add_argument("--steps", type=int, default=4)
  ap.add_argument("--real-set", choices=("full", "dipy", "none"), default="full")
  ap.add_argument("--real-slices", type=int, default=8)
  ap.add_argument("--copy-montage", metavar="PNG", help="also copy the real-scan montage here")
  ap.add_argument("--faithfulness", action="store_true")
  ap.add_argument("--no-speed", action="store_true")
  ap.add_argument("--no-quality", action="store_true", help="speed only (skip evaluate)")
  ap.add_argument("--out", default="bench_restoration")
  args = ap.parse_args()

  import jax

  from mri_jax import evaluate, restore
  from mri_jax.errors import UserInputError

  try:
    checkpoint = restore.choose_weights(args.checkpoint, args.fast)
  except UserInputError as err:
    ap.error(str(err))
  print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, JAX devices {jax.devices()}")
  t = time.perf_counter()
  report = {} if args.no_quality else evaluate.evaluate(
      args.out, data_dir=args.data_dir, slices=args.slices, steps=args.steps, checkpoint=checkpoint,
      real_set=args.real_set, real_slices=args.real_slices, with_faithfulness=args.faithfulness)
  if report:
    print(report["markdown"])
    print(f"evaluate wall time: {time.perf_counter() - t:.0f} s")
  if args.copy_montage and "real_scans" in report:
    shutil.copyfile(os.path.join(args.out, "real_scans.png"), args.copy_montage)
  if not args.no_speed:
    s = speed(restore.load_model(checkpoint))
    c = cli_speed(args.out, options=["--fast"] if args.fast else []) if args.checkpoint is None else {}
    print(json.dumps({**s, **c}, indent=1))
    print("| case | restorer | SimpleITK N4 (shrink 4) | + dipy NLM | + scikit-image NLM | speed-up |\n"
          "|---|---|---|---|---|---|")
    print(f"| one 256² slice | {s['slice_restorer_s']:.3f} s (network {s['slice_network_s']:.3f} s) | "
          f"{s['slice_sitk_n4_s']:.3f} s | {s['slice_sitk_n4_s'] + s['slice_dipy_nlm_s']:.3f} s | "
          f"{s['slice_sitk_n4_s'] + s['slice_skimage_nlm_s']:.3f} s | "
          f"{s['slice_speedup_vs_n4_nlm']:.2f}× vs N4 + dipy NLM, {s['slice_speedup_vs_n4_nlm_skimage']:.2f}× vs "
          f"N4 + scikit-image NLM, {s['slice_speedup_vs_n4']:.2f}× vs N4 |")
    print(f"| 3-D volume 197×233×189 ({s['volume_restored_slices']} slices restored) | {s['volume_restorer_s']:.2f} s | "
          f"{s['volume_sitk_n4_s']:.2f} s | – | – | {s['volume_speedup_vs_n4']:.2f}× vs N4 |")
    if c:
      print(f"\nCLI wall time (fresh processes): first call with an empty cache {c['cli_first_s']:.1f} s; later "
            f"calls {c['cli_later_s']:.2f} s (best of 3: {', '.join(f'{x:.2f}' for x in c['cli_later_all_s'])}); "
            f"20 files of 256² in one command {c['cli_20_files_s']:.1f} s")


if __name__ == "__main__":
  main()
