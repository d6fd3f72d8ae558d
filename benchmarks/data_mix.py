"""The mixed training data (issue 14): a montage of 64 examples and the build speed.

Run:  python benchmarks/data_mix.py [--config mixed128] [--subjects 6] [--out benchmarks/data_mix.png]

Generates `--subjects` training subjects (16 slices each) of a `mri_pairs` config exactly as the
builder does (`pairs.generate`: label scenes → clean image → simulator → JAX N4), times each
subject, and writes
1. a montage of 64 random examples, clean | corrupted side by side (each image scaled to its own
   99.5th percentile), to `--out`;
2. the build speed: the one-time compilation (generator, one simulator per coil count and coil
   model, N4), examples/s once compiled, and the estimated time to build the whole config (all
   three splits);
3. what the mix holds: shares of scene kinds and weightings, images without air, embedded
   (zero-padded) fields of view, noise-free and bias-free examples, σ and log-field ranges.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import platform
import time

import jax
import numpy as np

from mri_jax.data import pairs
from mri_jax.io import nifti
from mri_jax.physics import sampling


def montage(pairs_list, tile: int, cols: int = 8) -> np.ndarray:
  """uint8 image of (clean, corrupted) pairs, `cols` pairs per row, 2-px gaps."""
  rows = -(-len(pairs_list) // cols)
  gap = 2
  out = np.full((rows * (tile + gap), cols * (2 * tile + 3 * gap)), 255, np.uint8)
  for i, (clean, corrupted) in enumerate(pairs_list):
    r, c = divmod(i, cols)
    for j, img in enumerate((clean, corrupted)):
      scale = max(float(np.percentile(img, 99.5)), 1e-6)
      x = (np.clip(img / scale, 0.0, 1.0) * 255).astype(np.uint8)
      if x.shape[0] != tile:  # nearest-neighbour resize, keeps the noise texture
        idx = (np.arange(tile) * x.shape[0] / tile).astype(int)
        x = x[idx][:, idx]
      y0, x0 = r * (tile + gap), c * (2 * tile + 3 * gap) + j * (tile + gap)
      out[y0:y0 + tile, x0:x0 + tile] = x.T[::-1]  # axis 0 → rightwards, as the other figures
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default="mixed128")
  ap.add_argument("--subjects", type=int, default=6, help="training subjects to generate and time")
  ap.add_argument("--tile", type=int, default=128, help="montage tile side (pixels)")
  ap.add_argument("--out", default="benchmarks/data_mix.png")
  args = ap.parse_args()

  from PIL import Image

  from tfds_builders import mri_pairs

  base = {c.name: c for c in mri_pairs.BUILDER_CONFIGS}[args.config].pairs
  cfg = dataclasses.replace(base, subjects=(args.subjects, 0, 0))
  print(f"# data mix — {args.config}; {platform.machine()}, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), jax {jax.__version__}")

  # Compilation: the generator, one simulator per (coil count, coil model), N4.
  t = time.perf_counter()
  ex = pairs.mixed_subject(cfg, "train", 0)
  cleans, masks = np.asarray(ex.clean), np.asarray(ex.mask)
  ranges = sampling.training_ranges(cfg.corruption or None)
  n = cfg.slices_per_subject
  for c in cfg.coils:
    for m in range(len(ranges.get("coil_models", (None,)))):
      images, _, _ = pairs.corrupt(cleans, masks, np.full(n, c), jax.random.key(0), ranges, np.full(n, m))
  pairs.run_n4(images, cfg.n4_backend, cfg.n4_iterations)
  compile_s = time.perf_counter() - t
  print(f"compilation (generator, {len(cfg.coils)} coil counts x coil models, N4): {compile_s:.0f} s")

  # Generation, timed per subject.
  records, times = [], []
  t = time.perf_counter()
  for i, (_, ex) in enumerate(pairs.generate(cfg, "train")):
    records.append(ex)
    if (i + 1) % cfg.slices_per_subject == 0:
      now = time.perf_counter()
      times.append(now - t)
      t = now
  rate = len(records) / sum(times)
  total = sum(base.subjects) * base.slices_per_subject
  print(f"subjects' times (s): {', '.join(f'{x:.1f}' for x in times)}")
  print(f"build speed (compiled): {rate:.2f} examples/s")
  print(f"full build estimate for {args.config} ({total} examples): "
        f"{(compile_s + total / rate) / 60:.1f} min")

  # What the mix holds.
  n = len(records)
  share = lambda f: 100.0 * sum(bool(f(r)) for r in records) / n
  kinds = sorted({r["contrast"] for r in records})
  print(f"examples: {n}; contrasts: " + ", ".join(
      f"{k} {share(lambda r, k=k: r['contrast'] == k):.0f}%" for k in kinds))
  padded = lambda r: (r["corrupted"] == 0).all(0).any() or (r["corrupted"] == 0).all(1).any()
  print(f"no air in the field of view: {share(lambda r: (r['mask'] | (r['corrupted'] == 0)).all()):.0f}%; "
        f"zero columns or rows (embedded field of view, or zero background): {share(padded):.0f}%; "
        f"noise-free: {share(lambda r: r['noise_sigma'] == 0):.0f}%; "
        f"bias-free: {share(lambda r: r['bias_log_std'] < 1e-4):.0f}%")
  sig = np.asarray([r["noise_sigma"] for r in records])
  bls = np.asarray([r["bias_log_std"] for r in records])
  print(f"σ: {sig.min():.4f}–{sig.max():.4f} (median {np.median(sig):.4f}); "
        f"log-field std: median {np.median(bls):.3f}, 90th pct {np.percentile(bls, 90):.3f}, max {bls.max():.3f}")

  rng = np.random.default_rng(0)
  pick = rng.choice(n, size=min(64, n), replace=False)
  img = montage([(records[i]["clean"], records[i]["corrupted"]) for i in pick], args.tile)
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG", optimize=True)
  nifti.atomic_write_bytes(args.out, buf.getvalue())
  print(f"montage: {args.out} ({len(buf.getvalue()) / 1e6:.2f} MB)")


if __name__ == "__main__":
  main()
