"""Restoration quality and speed: the restorer vs N4, N4 + NLM and the oracle, same run, same CPU.

Run:  python benchmarks/restoration.py [--data-dir DATA] [--checkpoint DIR] [--slices 64] [--steps 4]
      [--real-set full|dipy|none] [--real-slices 8] [--faithfulness] [--no-speed] [--out bench_out]
      [--copy-montage benchmarks/real_scans.png]

Quality: `mri-jax evaluate` (held-out synthetic subjects of mri_pairs/slices128 when --data-dir is
given, and the real-scan validation set: seven groups of real scans shipped in dipy, nibabel and
heudiconv wheels, each corrupted by the simulator and by an independent NumPy model; see
`mri_jax.evaluate` and `mri_jax.realscans`). The real-scan table in RESULTS.md comes from
  python benchmarks/restoration.py --real-set full --real-slices 8 --no-speed --out bench_real \
      --copy-montage benchmarks/real_scans.png
Speed (best of 3 after compilation, same process):
- one 256² slice (the MNI152 1 mm axial mid-slice, corrupted): restorer (JAX N4 + K = 1) vs
  SimpleITK N4 (shrink 4) + dipy Rician NLM, and vs SimpleITK N4 alone;
- one 3-D volume (MNI152 at 1 mm, 197×233×189, restored slice-wise) vs SimpleITK N4 (shrink 4) in
  3-D.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time

import numpy as np


def best_of(fn, n=3):
  fn()
  times = []
  for _ in range(n):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def speed(model, log=print) -> dict:
  from mri_jax import evaluate, file_jobs, n4, restore
  from mri_jax.data import anatomy

  a = anatomy.load_mni152()
  settings = file_jobs.corruption_settings(coils=8, noise=0.03)
  vol = np.asarray(file_jobs.simulate_array(a.t1, seed=0, settings=settings, spacing=(1.0, 1.0, 1.0),
                                            reference_mask=a.mask).image)
  z = vol.shape[-1] // 2
  sl = np.zeros((256, 256), np.float32)
  sl[:vol.shape[0], :vol.shape[1]] = vol[:256, :256, z]
  log("speed: one 256² slice...")
  t_restore = best_of(lambda: restore.restore_array(sl, model))
  t_n4 = best_of(lambda: n4.n4_sitk(sl, settings=n4.N4Settings(shrink=4)))
  n4_img = np.asarray(n4.n4_sitk(sl, settings=n4.N4Settings(shrink=4)).corrected)
  t_nlm = best_of(lambda: evaluate.nlm_dipy(n4_img[None]))
  log("speed: one 3-D volume (197×233×189)...")
  t_vol = best_of(lambda: restore.restore_array(vol, model, batch_size=32), n=1)
  t_vol_n4 = best_of(lambda: n4.n4_sitk(vol, settings=n4.N4Settings(shrink=4)), n=1)
  return {"slice_restorer_s": t_restore, "slice_sitk_n4_s": t_n4, "slice_dipy_nlm_s": t_nlm,
          "slice_speedup_vs_n4_nlm": (t_n4 + t_nlm) / t_restore, "slice_speedup_vs_n4": t_n4 / t_restore,
          "volume_restorer_s": t_vol, "volume_sitk_n4_s": t_vol_n4, "volume_speedup_vs_n4": t_vol_n4 / t_vol}


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data-dir", help="TFDS data directory with mri_pairs (omit: real images only)")
  ap.add_argument("--checkpoint")
  ap.add_argument("--slices", type=int, default=64)
  ap.add_argument("--steps", type=int, default=4)
  ap.add_argument("--real-set", choices=("full", "dipy", "none"), default="full")
  ap.add_argument("--real-slices", type=int, default=8)
  ap.add_argument("--copy-montage", metavar="PNG", help="also copy the real-scan montage here")
  ap.add_argument("--faithfulness", action="store_true")
  ap.add_argument("--no-speed", action="store_true")
  ap.add_argument("--out", default="bench_restoration")
  args = ap.parse_args()

  import jax

  from mri_jax import evaluate, restore

  print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, JAX devices {jax.devices()}")
  t = time.perf_counter()
  report = evaluate.evaluate(args.out, data_dir=args.data_dir, slices=args.slices, steps=args.steps,
                             checkpoint=args.checkpoint, real_set=args.real_set, real_slices=args.real_slices,
                             with_faithfulness=args.faithfulness)
  print(report["markdown"])
  print(f"evaluate wall time: {time.perf_counter() - t:.0f} s")
  if args.copy_montage and "real_scans" in report:
    shutil.copyfile(os.path.join(args.out, "real_scans.png"), args.copy_montage)
  if not args.no_speed:
    s = speed(restore.load_model(args.checkpoint))
    print("| case | restorer | SimpleITK N4 (shrink 4) | + dipy NLM | speed-up |\n|---|---|---|---|---|")
    print(f"| one 256² slice | {s['slice_restorer_s']:.3f} s | {s['slice_sitk_n4_s']:.3f} s | "
          f"{s['slice_sitk_n4_s'] + s['slice_dipy_nlm_s']:.3f} s | {s['slice_speedup_vs_n4_nlm']:.1f}× vs N4+NLM, "
          f"{s['slice_speedup_vs_n4']:.1f}× vs N4 |")
    print(f"| 3-D volume 197×233×189 | {s['volume_restorer_s']:.2f} s | {s['volume_sitk_n4_s']:.2f} s | – | "
          f"{s['volume_speedup_vs_n4']:.1f}× vs N4 |")


if __name__ == "__main__":
  main()
