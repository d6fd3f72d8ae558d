"""Input-pipeline throughput: records from disk (grain) and on-device corruption (simulator + JAX N4).

Run:  python benchmarks/input_pipeline.py [--size 128] [--batch 32] [--workers 0 2]

Builds a small `mri_pairs` config at the given slice size (4/1/1 synthetic subjects × 16 slices,
into a temporary directory), then measures examples/s of
1. mode "records": `make_loader` + `to_global` (decode all six images of each record), per
   worker count;
2. mode "on device": `make_loader` of clean + mask only, then `corrupt_on_device` (8 coils; N4
   3 levels × 20 iterations) inside `jax.jit`.
Build time is printed too. Compare with the train step's time per batch: the pipeline is not the
bottleneck if its examples/s exceed the step's.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile
import time

import jax

from mri_jax.data import pairs, pipeline


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--size", type=int, default=128)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
  ap.add_argument("--batches", type=int, default=20)
  args = ap.parse_args()

  from tfds_builders import mri_pairs

  base = {c.name: c for c in mri_pairs.BUILDER_CONFIGS}["slices128"]
  cfg = mri_pairs.MriPairsConfig(
      name=f"bench{args.size}", description="benchmark",
      pairs=dataclasses.replace(base.pairs, size=args.size, voxel_mm=2 if args.size <= 128 else 1,
                                subjects=(4, 1, 1)))
  print(f"# input pipeline — {platform.machine()}, {jax.device_count()} {jax.devices()[0].platform} "
        f"device(s), jax {jax.__version__}; slices {args.size}², global batch {args.batch}")
  with tempfile.TemporaryDirectory() as data_dir:
    t = time.perf_counter()
    builder = mri_pairs.Builder(config=cfg, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    n_train = builder.info.splits["train"].num_examples
    print(f"build: {time.perf_counter() - t:.1f} s for {n_train + 32} examples (incl. compilation)")
    name = f"mri_pairs/{cfg.name}"
    mesh = pipeline.data_mesh()
    rows = []
    for workers in args.workers:
      loader = pipeline.make_loader(name, "train", data_dir=data_dir, global_batch=args.batch, seed=0,
                                    worker_count=workers)
      it = iter(loader)
      jax.block_until_ready(pipeline.to_global(next(it), mesh))  # start-up (workers, first read)
      t = time.perf_counter()
      for _ in range(args.batches):
        jax.block_until_ready(pipeline.to_global(next(it), mesh))
      rate = args.batches * args.batch / (time.perf_counter() - t)
      rows.append((f"records, {workers} worker(s)", rate))

    step = jax.jit(lambda k, b: pipeline.corrupt_on_device(k, b["clean"], b["mask"], n_coils=8))
    loader = pipeline.make_loader(name, "train", data_dir=data_dir, global_batch=args.batch, seed=0,
                                  fields=("clean", "mask"))
    it = iter(loader)
    jax.block_until_ready(step(jax.random.key(0), pipeline.to_global(next(it), mesh)))
    t = time.perf_counter()
    for i in range(args.batches):
      jax.block_until_ready(step(jax.random.key(i), pipeline.to_global(next(it), mesh)))
    rows.append(("on device: simulator (8 coils) + JAX N4", args.batches * args.batch / (time.perf_counter() - t)))
  print("\n| mode | examples/s |\n|---|---|")
  for name_, rate in rows:
    print(f"| {name_} | {rate:.0f} |")


if __name__ == "__main__":
  main()
