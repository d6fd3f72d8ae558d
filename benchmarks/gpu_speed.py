"""Restore's speed on a GPU: the cases of `benchmarks/restoration.py`'s speed table, timed on the device.

The device machine has no nilearn or SimpleITK, so the inputs travel: `--make-input` (here, with
the full extras) writes the corrupted MNI152 1 mm volume (197×233×189, 8 coils, noise 0.03: the
speed benchmark's) as float16 to `.gpu_carry/speed_input.npz` (git-ignored; name `.gpu_carry` in
the device call's `carry`). On the device (jax with CUDA, flax, optax, orbax, chex, numpy, scipy;
the carried ml_collections wheel of `benchmarks/gpu_assets/wheels` when missing):
  python benchmarks/gpu_speed.py --out $OUT [--checkpoint DIR ...]
Timed per model (the shipped weights unless --checkpoint is given): the network alone on one 256²
slice (its N4 image and field from JAX N4, as restore passes them; best of 10), `restore_array` on
that slice (best of 3), and on the volume (one warm-up that compiles its shapes, then one timed
call), with restore's own per-stage times (`RestoreResult.seconds`: N4 with the field network,
the network, the blend, total) of one more slice call and of the timed volume call. Writes
gpu_speed.json and gpu_speed.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
INPUT = ROOT / ".gpu_carry" / "speed_input.npz"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def make_input(path: Path) -> None:
  from restoration import _test_images

  vol, _ = _test_images()
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(path, volume=vol.astype(np.float16))
  print(f"{path}: {path.stat().st_size / 2 ** 20:.1f} MiB, volume {vol.shape}")


def time_model(checkpoint, vol: np.ndarray, log) -> dict:
  from mri_jax import n4, restore
  from restoration import best_of, frame_slice, network_seconds, restored_slice_count

  t = time.perf_counter()
  model = restore.load_model(checkpoint)
  t_load = time.perf_counter() - t
  sl = frame_slice(vol, vol.shape[-1] // 2)
  n4_res = n4.n4_batch(sl[None], settings=restore.restore_n4_settings(model))
  t_compile_net, t_net = network_seconds(model, sl, n4_res, n=10)
  t = time.perf_counter()
  restore.restore_array(sl, model)
  t_first_slice = time.perf_counter() - t
  t_slice = best_of(lambda: restore.restore_array(sl, model))
  stages_slice = restore.restore_array(sl, model).seconds  # restore's own per-stage times
  t = time.perf_counter()
  restore.restore_array(vol, model)
  t_first_vol = time.perf_counter() - t
  t = time.perf_counter()
  out = restore.restore_array(vol, model)
  t_vol = time.perf_counter() - t
  row = {"checkpoint": str(checkpoint or "shipped"), "load_s": t_load, "network_compile_s": t_compile_net,
         "slice_network_s": t_net, "slice_first_call_s": t_first_slice, "slice_restorer_s": t_slice,
         "volume_first_call_s": t_first_vol, "volume_restorer_s": t_vol,
         "volume_restored_slices": restored_slice_count(out),
         "slice_stages_s": stages_slice, "volume_stages_s": out.seconds}
  log(json.dumps(row))
  return row


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="gpu_speed")
  p.add_argument("--checkpoint", action="append", default=[], help="weights folder (repeatable; default: shipped)")
  p.add_argument("--input", default=str(INPUT))
  p.add_argument("--make-input", action="store_true", help="write the carried input volume and exit")
  a = p.parse_args(argv)
  if a.make_input:
    make_input(Path(a.input))
    return 0
  if not Path(a.input).is_file():
    sys.exit(f"error: no input volume at {a.input}; run `python benchmarks/gpu_speed.py --make-input` first")
  from gpu_recipe import _ADDED_WHEELS  # puts the carried ml_collections wheel on sys.path when missing
  import jax

  log = lambda s: print(s, flush=True)  # noqa: E731
  with np.load(a.input) as z:
    vol = z["volume"].astype(np.float32)
  log(f"devices {jax.devices()}; wheels {_ADDED_WHEELS or 'none'}; volume {vol.shape}")
  rows = [time_model(c, vol, log) for c in (a.checkpoint or [None])]
  out = Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  dev = str(jax.devices()[0].device_kind)
  (out / "gpu_speed.json").write_text(json.dumps({"device": dev, "jax": jax.__version__, "rows": rows}, indent=1))
  lines = [f"# Restore speed on {dev} (jax {jax.__version__})", "",
           f"| weights | network, 256² | restore, 256² slice | restore, {'×'.join(map(str, vol.shape))} volume | "
           "first calls (slice / volume) |",
           "|---|---|---|---|---|"]
  lines += [f"| {r['checkpoint']} | {1e3 * r['slice_network_s']:.1f} ms | {r['slice_restorer_s']:.3f} s | "
            f"{r['volume_restorer_s']:.2f} s ({r['volume_restored_slices']} slices) | "
            f"{r['slice_first_call_s']:.1f} / {r['volume_first_call_s']:.1f} s |" for r in rows]
  lines += ["", "restore's stages, seconds (slice; volume):"]
  lines += [f"- {r['checkpoint']}: " + ", ".join(f"{k} {v:.3f}" for k, v in r["slice_stages_s"].items()) + "; "
            + ", ".join(f"{k} {v:.2f}" for k, v in r["volume_stages_s"].items()) for r in rows]
  (out / "gpu_speed.md").write_text("\n".join(lines) + "\n")
  log("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
