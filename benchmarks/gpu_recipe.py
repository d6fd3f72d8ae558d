"""Train the larger restorer (`configs/gpu.py`) on one GPU in about 8 minutes, export it, evaluate it.

Needs only jax (with CUDA), flax, optax, orbax-checkpoint, chex, numpy and scipy, plus the files
in `benchmarks/gpu_assets/` (9 MiB, in git): `anatomy.npz` (the MNI152 CSF/GM/WM maps at 2 mm,
which the head scenes are built on), `real_scans.npz` (the real-scan validation set of
`mri-jax evaluate`, already corrupted), and `wheels/` with two pure-Python wheels that
mri_jax imports and such a machine may lack (ml_collections, tqdm; put on `sys.path` only when
missing). No dataset is built: every step trains on a fresh batch made on the device (mixed generator →
simulator with the 'wide' ranges → field of view → JAX N4, one jitted function) and trains with
the trainer's own jitted steps (`trainer.make_steps`).

On the device machine (the repository root is the working directory; results come back from $OUT):
  python benchmarks/gpu_recipe.py --out $OUT
The export is ≈ 19 MiB; where files come back from the device in parts of at most 16 MiB, split it
there (`split -b 15m -d $OUT/weights/model.npz $OUT/weights/model.npz.part`) and join the parts with
`cat` here (benchmarks/RESULTS.md, fifteenth pass, has the command line used).
CPU smoke run (48² images, 16 steps, 2 real-scan sets; 2.3 min on 2 busy cores, mostly compiling):
  python benchmarks/gpu_recipe.py --tiny --out /tmp/gpu_tiny
An ablation arm: the same command with one override, e.g. `--set model.condition_n4=False`,
`--set "model.space='pixel'"` or `--set model.fidelity=False`; with `--budget-s 0` and the stage
counts of the run it is compared with (`--set train.ae_steps=N` ...) both train the same steps.
FLOPs per step of the GPU config (lowering only, nothing compiled):
  python benchmarks/gpu_recipe.py --estimate
Rebuild the carried files (on a machine with the full extras: nilearn, dipy, nibabel, pydicom,
heudiconv):
  python benchmarks/gpu_recipe.py --make-assets
  pip download ml_collections==1.1.0 tqdm==4.70.1 --no-deps -d benchmarks/gpu_assets/wheels/

Phases, each timed in results.json: setup (assets, config), compile (batch generator, the configured
stages' steps), calibrate (a few timed steps; the step counts are rescaled to `--budget-s` unless it is
0), train, export (`checkpoints.save_weights` → $OUT/weights, the folder
`mri-jax restore --checkpoint` reads), eval_synthetic (held-out on-device batches: restored vs
corrupted vs N4, and the autoencoder's ceiling), eval_real (the exported weights reloaded with
`restore.load_model`, each real-scan set restored with `restore.restore_array`, as `mri-jax
evaluate` does: corrupted / oracle / N4 (JAX) / restored / AE ceiling). Outputs: results.json,
results.md, samples.npz (a few images of each kind, for montages elsewhere), weights/.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "benchmarks" / "gpu_assets"
CARRIED = ("ml_collections", "tqdm")  # pure-Python packages mri_jax imports; wheels in ASSETS/wheels


def _carried_wheels() -> list[str]:
  """Puts the carried wheels of missing packages on sys.path (pure-Python wheels import as zips)."""
  import importlib.util

  added = []
  for name in CARRIED:
    if importlib.util.find_spec(name) is None:
      wheels = sorted((ASSETS / "wheels").glob(f"{name}-*.whl"))
      if not wheels:
        sys.exit(f"error: {name} is not installed and {ASSETS / 'wheels'} has no {name} wheel")
      sys.path.append(str(wheels[-1]))
      added.append(wheels[-1].name)
  return added


sys.path.insert(0, str(ROOT))  # mri_jax and configs from this checkout (not installed there)
_ADDED_WHEELS = _carried_wheels()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import gpu as gpu_config  # noqa: E402
from mri_jax import checkpoints, evaluate, n4, physics, restore  # noqa: E402
from mri_jax.data import labels, mixed, pairs  # noqa: E402
from mri_jax.models import restorer as R  # noqa: E402
from mri_jax.train import trainer  # noqa: E402

# Packages a GPU machine without a registry lacks (STACK_NOTES); the recipe must not import them.
BLOCKED = ("grain", "tensorflow_datasets", "array_record", "nibabel", "SimpleITK", "nilearn", "tensorboardX",
           "matplotlib", "tensorflow")
DATA_BRANCH, EVAL_BRANCH = 0x0DA7A, 0xE7A1  # key branches: training batches, held-out batches


# --------------------------------------------------------------------------------------------
# Carried files
# --------------------------------------------------------------------------------------------
def coarser(tissues: np.ndarray, f: int) -> np.ndarray:
  """(3, X, Y, Z) maps block-averaged by f per spatial axis (zero-padded), as `pairs.template_tissues`."""
  if f == 1:
    return tissues
  shape = [-(-n // f) * f for n in tissues.shape[1:]]
  pad = np.zeros((tissues.shape[0], *shape), tissues.dtype)
  pad[(slice(None),) + tuple(slice(0, n) for n in tissues.shape[1:])] = tissues
  x, y, z = (n // f for n in shape)
  return pad.reshape(tissues.shape[0], x, f, y, f, z, f).mean(axis=(2, 4, 6)).astype(np.float32)


def template_slices(path: Path, voxel_mm: int, canvas: int) -> np.ndarray:
  """(N, 3, canvas, canvas) head-scene slices from the carried 2 mm maps (bit-identical to the
  dataset build's at 2 mm; at 4 mm within 3e-7, float rounding of the two-step block mean)."""
  with np.load(path) as z:
    tissues, base = z["tissues_2mm"], int(z["voxel_mm"])
  if voxel_mm % base:
    raise SystemExit(f"error: the carried anatomy is at {base} mm; data.voxel_mm must be a multiple of it")
  return labels.template_slices(coarser(tissues, voxel_mm // base), canvas)


def load_real_sets(path: Path, limit: int | None) -> list[evaluate.TestSet]:
  """The carried real-scan test sets (`evaluate.real_scan_sets`, written by `make_assets`)."""
  sets = []
  with np.load(path) as z:
    meta = json.loads(str(z["meta"]))
    for i, m in enumerate(meta[:limit]):
      g = m["group"]
      sets.append(evaluate.TestSet(m["name"], z[f"{g}/clean"], z[f"{i}/corrupted"],
                                   z[f"{i}/bias"].astype(np.float32), z[f"{g}/mask"],
                                   z[f"{i}/sigma"], g, m["corruption"]))
  return sets


def make_assets(out: Path) -> None:
  """Writes anatomy.npz and real_scans.npz (needs nilearn, nibabel, dipy, pydicom, heudiconv)."""
  out.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(out / "anatomy.npz", tissues_2mm=pairs.template_tissues(2), voxel_mm=np.int32(2))
  _, sets = evaluate.real_scan_sets(seed=1, slices=8)  # exactly evaluate's real-scan validation set
  arrays, meta = {}, []
  for i, ts in enumerate(sets):
    arrays.setdefault(f"{ts.group}/clean", ts.clean.astype(np.float32))
    arrays.setdefault(f"{ts.group}/mask", ts.mask.astype(bool))
    arrays[f"{i}/corrupted"] = ts.corrupted.astype(np.float32)
    arrays[f"{i}/bias"] = ts.bias.astype(np.float16)  # smooth, > 0: only the oracle row reads it
    arrays[f"{i}/sigma"] = np.asarray(ts.sigma, np.float32)
    meta.append({"name": ts.name, "group": ts.group, "corruption": ts.corruption})
  np.savez_compressed(out / "real_scans.npz", meta=np.asarray(json.dumps(meta)), **arrays)
  for f in ("anatomy.npz", "real_scans.npz"):
    print(f"{out / f}: {(out / f).stat().st_size / 2 ** 20:.2f} MiB")


# --------------------------------------------------------------------------------------------
# Batches on the device
# --------------------------------------------------------------------------------------------
def make_batch_fn(cfg, slices: np.ndarray):
  """Jitted key → D = `data.batches_per_draw` training batches {clean, corrupted, n4_corrected,
  n4_log_field, mask} (D, B, S, S), all different examples. One draw makes D batches because its
  cost is mostly latency (≈ 200 sequential N4 iterations), not arithmetic: D batches cost about
  as much as one.

  The steps of the `mixed128` build, on the device: clean `mixed.examples`; the simulator with
  the configured ranges, one (coil count, coil model) per chunk of B / `coil_groups` examples
  (`lax.switch` inside `lax.map`: one branch runs per chunk); `mixed.finish` (field of view, zero
  background); JAX N4 with the model's settings and an Otsu mask (as `pipeline.corrupt_on_device`).
  """
  d = cfg.data
  draws = int(d.batches_per_draw)
  b, groups = int(cfg.train.batch) * draws, int(d.coil_groups) * draws
  if b % groups:
    raise SystemExit(f"error: train.batch {cfg.train.batch} is not divisible by data.coil_groups {d.coil_groups}")
  settings = pairs.mix_settings(pairs.PairsConfig(anatomy="mixed", size=int(d.size), canvas=int(d.canvas),
                                                  voxel_mm=int(d.voxel_mm), corruption=d.corruption))
  ranges = physics.sampling.training_ranges(d.corruption or None)
  combos = [(int(c), m) for c in d.coils for m in ranges.get("coil_models", ("biot_savart",))]
  n4_settings = R.n4_settings(cfg)
  plan = n4.plan((int(d.size),) * 2, n4_settings)
  slices = jnp.asarray(slices)

  def branch(n_coils, model, key, clean, mask):
    return pairs.simulate_batch(jax.random.split(key, clean.shape[0]), clean, mask, n_coils, ranges, model)

  branches = [functools.partial(branch, c, m) for c, m in combos]

  @jax.jit
  def batch(key):
    k_ex, k_combo, k_sim = jax.random.split(key, 3)
    ex = mixed.examples(jax.random.split(k_ex, b), slices, settings)
    chunk = lambda a: a.reshape(groups, b // groups, *a.shape[1:])  # noqa: E731
    which = jax.random.randint(k_combo, (groups,), 0, len(combos))
    images, _, _ = jax.lax.map(lambda a: jax.lax.switch(a[0], branches, *a[1:]),
                               (which, jax.random.split(k_sim, groups), chunk(ex.clean), chunk(ex.mask)))
    images = mixed.finish(images.reshape(ex.clean.shape), ex)
    res = jax.vmap(lambda x: n4.n4_traced(x, None, plan, n4_settings))(images)
    out = {"clean": ex.clean, "corrupted": images, "n4_corrected": res.corrected,
           "n4_log_field": res.log_field, "mask": ex.mask.astype(jnp.float32)}
    return {k: v.reshape(draws, b // draws, *v.shape[1:]) for k, v in out.items()}

  return batch, len(combos)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
STAGES = ("ae", "diffusion", "fidelity", "joint")


def active_stages(setup, state) -> list[str]:
  """The stages this config trains (no autoencoder in pixel space, no path, no joint steps)."""
  return [s for s in STAGES if not (s == "ae" and setup.restorer.ae_def is None or s == "fidelity" and state.fid is None
                                    or s == "joint" and not trainer.joint_steps(setup.cfg))]


def warm_and_time(steps: dict, setup, state, batch_fn, data_key, n: int) -> tuple[dict, dict]:
  """Compiles the jitted `steps` of the configured stages (first call) and times `n` more calls of
  each; ({stage: compile s}, {stage: s per step}). The state is left untouched."""
  compile_s, per_step = {}, {}
  key = jax.random.key(0)
  batch = batch_at(batch_fn(data_key), 0)
  for stage in active_stages(setup, state):
    t = time.perf_counter()
    jax.block_until_ready(steps[stage](state, batch, key))
    compile_s[stage] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n):
      out = steps[stage](state, batch, key)
    jax.block_until_ready(out)
    per_step[stage] = (time.perf_counter() - t) / max(n, 1)
  return compile_s, per_step


def batch_at(draw: dict, j: int) -> dict:
  """Batch j of a draw (D, B, ...)."""
  return {k: v[j] for k, v in draw.items()}


def rescale(cfg, per_step: dict, seconds: float) -> float:
  """Scales the stages' step counts in `cfg` (in place) so they train in `seconds`."""
  names = {s: f"{s}_steps" for s in STAGES}
  projected = sum(int(cfg.train[names[s]]) * t for s, t in per_step.items())
  factor = max(seconds, 1.0) / max(projected, 1e-9)
  for s in per_step:
    cfg.train[names[s]] = max(int(round(int(cfg.train[names[s]]) * factor)), 10)
  cfg.optimizer.warmup = min(int(cfg.optimizer.warmup), max(int(cfg.train.ae_steps) // 10, 1))
  return factor


def train(cfg, setup, steps: dict, state, batch_fn, log) -> tuple[object, list]:
  """The stages with the trainer's jitted `steps`; keys as `trainer.train` (fold_in(step)), and
  the joint stage starts from the EMA UNet as there."""
  ends = trainer.stage_ends(cfg, setup.restorer)
  base = jax.random.key(cfg.seed)
  data_key = jax.random.fold_in(base, DATA_BRANCH)
  history, t0 = [], time.perf_counter()
  total = ends["joint"]
  draws = int(cfg.data.batches_per_draw)
  for step in range(total):
    stage = next(name for name, end in ends.items() if step < end)
    if step % draws == 0:
      draw = batch_fn(jax.random.fold_in(data_key, step // draws))
    state, m = steps[stage](trainer.begin_step(state, step, stage, ends), batch_at(draw, step % draws),
                            jax.random.fold_in(base, step))
    done = step + 1
    if done % int(cfg.train.log_every) == 0 or done == ends[stage]:
      m = {k: float(v) for k, v in m.items()}
      if not np.isfinite(m["loss"]):
        raise FloatingPointError(f"{stage} loss is {m['loss']} at step {done}")
      elapsed = time.perf_counter() - t0
      history.append({"step": done, "stage": stage, "seconds": round(elapsed, 2), **m})
      log(f"step {done}/{total} [{stage}] " + " ".join(f"{k} {v:.4g}" for k, v in m.items())
          + f" | {done / elapsed:.1f} steps/s")
  jax.block_until_ready(state)
  return state, history


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def eval_synthetic(cfg, setup, state, batch_fn) -> tuple[dict, dict]:
  """Mean scores over `data.eval_batches` held-out on-device batches (a key branch training never
  uses) with the trainer's validation functions; and the first batch's images."""
  evals = trainer.make_eval(setup)
  key = jax.random.fold_in(jax.random.key(cfg.seed), EVAL_BRANCH)
  n, draws = int(cfg.data.eval_batches), int(cfg.data.batches_per_draw)
  totals, images = {}, None
  for i in range(n):
    if i % draws == 0:
      draw = batch_fn(jax.random.fold_in(key, i // draws))
    batch = batch_at(draw, i % draws)
    for stage in ("ae", "diffusion"):
      if stage == "ae" and setup.restorer.ae_def is None:
        continue
      scores, imgs = evals[stage](state, batch, jax.random.fold_in(key, 10_000 + i))
      for k, v in scores.items():
        totals[k] = totals.get(k, 0.0) + float(v) / n
      if i == 0 and stage == "diffusion":
        images = {k: np.asarray(v[:8], np.float16) for k, v in imgs.items()}
  totals["examples"] = n * int(cfg.train.batch)
  return totals, images


def eval_real(model, sets: list, n4_settings, log, stop_at: float = float("inf")) -> tuple[list, dict, list]:
  """Per real-scan test set: corrupted, oracle (÷ true field), N4 (JAX), restored (K = the model's),
  autoencoder ceiling; scored with `evaluate.score`. Rows, a few restored slices, and the sets
  skipped because the clock passed `stop_at` (each image size compiles N4 and the networks anew)."""
  rows, shown, skipped = [], {}, []
  for ts in sets:
    if time.perf_counter() > stop_at:
      skipped.append(ts.name)
      continue
    t = time.perf_counter()
    restored, _ = evaluate.run_restorer(model, ts.corrupted, model.default_steps)
    t_restore = (time.perf_counter() - t) / len(ts.corrupted)
    n4_img = np.asarray(n4.n4_batch(ts.corrupted, settings=n4_settings).corrected)
    outputs = {"corrupted": ts.corrupted, "oracle: corrupted / true field": ts.corrupted / ts.bias,
               "N4 (JAX)": n4_img, f"restorer K = {model.default_steps}": restored}
    ceiling = evaluate.ae_ceiling(model, ts.clean, ts.mask)
    if ceiling is not None:
      outputs["autoencoder(clean): the ceiling"] = ceiling
    for name, img in outputs.items():
      rows.append({"set": ts.name, "group": ts.group, "corruption": ts.corruption, "method": name,
                   **evaluate.score(np.asarray(img, np.float32), ts),
                   "seconds_per_slice": t_restore if name.startswith("restorer") else None})
    shown[f"{ts.group}/{ts.corruption}"] = np.stack([ts.corrupted[0], n4_img[0], restored[0], ts.clean[0]]).astype(np.float16)
    r = rows[-len(outputs):]
    log(f"[{ts.name}] " + ", ".join(f"{x['method'].split(':')[0]} {x['ssim']:.3f}" for x in r))
  if skipped:
    log(f"time budget spent: {len(skipped)} real-scan sets skipped")
  return rows, shown, skipped


def real_summary(rows: list) -> list:
  """Mean SSIM / PSNR per (corruption model, method) over the sets, and the do-no-harm count."""
  out = []
  for corruption in sorted({r["corruption"] for r in rows}):
    sel = [r for r in rows if r["corruption"] == corruption]
    base = {r["set"]: r["ssim"] for r in sel if r["method"] == "corrupted"}
    for method in dict.fromkeys(r["method"] for r in sel):
      m = [r for r in sel if r["method"] == method]
      out.append({"corruption": corruption, "method": method, "sets": len(m),
                  "ssim": float(np.mean([r["ssim"] for r in m])), "psnr": float(np.mean([r["psnr"] for r in m])),
                  "sets_below_input": int(sum(r["ssim"] < base[r["set"]] for r in m))})
  return out


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
  t = res["times_s"]
  lines = [f"# GPU recipe: {res['config_name']} on {res['device']}", "",
           f"Command: `{res['command']}`  ", f"jax {res['versions']['jax']}, flax {res['versions']['flax']}; "
           f"carried wheels used: {', '.join(res['carried_wheels']) or 'none'}", "",
           "| phase | seconds |", "|---|---|"]
  lines += [f"| {k} | {v:.1f} |" for k, v in t.items()]
  tr = res["train"]
  lines += ["", f"Steps: AE {tr['ae_steps']}, diffusion {tr['diffusion_steps']}, fidelity {tr['fidelity_steps']}, "
            f"joint {tr['joint_steps']}, "
            f"batch {tr['batch']} (scale factor {tr['scale_factor']:.2f} from the calibration); "
            f"ms per step: " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in tr["seconds_per_step"].items()), "",
            "## Held-out synthetic (on-device mixed data, wide corruption)", "",
            "| metric | value |", "|---|---|"]
  lines += [f"| {k} | {v:.4g} |" for k, v in res["synthetic"].items()]
  if res.get("real_summary"):
    lines += ["", "## Real-scan validation set (`mri-jax evaluate`'s, carried)", "",
              "| corruption | method | sets | SSIM | PSNR | sets below the input |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['corruption']} | {r['method']} | {r['sets']} | {r['ssim']:.3f} | {r['psnr']:.2f} | "
              f"{r['sets_below_input']} |" for r in res["real_summary"]]
    if res["real_skipped"]:
      lines += ["", f"Skipped for time: {len(res['real_skipped'])} sets ({', '.join(res['real_skipped'])})."]
  lines += ["", f"Weights: `{res['export']['path']}` ({res['export']['bytes'] / 2 ** 20:.1f} MiB); "
            "restore with `mri-jax restore --checkpoint <that folder>`.", ""]
  return "\n".join(lines)


def flops(fn, *args) -> float:
  """FLOPs of one call (XLA's cost analysis of the lowered function; nothing is compiled)."""
  cost = fn.lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def check(cfg, slices) -> dict:
  """Traces the on-device batch and the configured stages' training steps (shapes only, nothing compiled):
  the wiring, checked in seconds (tests/test_gpu_recipe.py)."""
  setup, state = trainer.make_setup(cfg)
  batch_fn, n_combos = make_batch_fn(cfg, slices)
  key = jax.random.key(0)
  draw = jax.eval_shape(batch_fn, key)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), draw)
  steps = trainer.make_steps(setup)
  losses = {s: sorted(jax.eval_shape(steps[s], state, batch, key)[1]) for s in active_stages(setup, state)}
  return {"carried_wheels": _ADDED_WHEELS, "coil_branches": n_combos,
          "draw": {k: [list(v.shape), str(v.dtype)] for k, v in draw.items()}, "metrics": losses,
          "modules": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}


def estimate(cfg, slices, log) -> dict:
  """FLOPs per step of each stage and of the on-device batch, from abstract shapes."""
  setup, state = trainer.make_setup(cfg)
  batch_fn, _ = make_batch_fn(cfg, slices)
  key = jax.random.key(0)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), jax.eval_shape(batch_fn, key))
  steps = trainer.make_steps(setup)
  out = {"batch_fn (per draw)": flops(batch_fn, key)}
  for stage in active_stages(setup, state):
    out[stage] = flops(steps[stage], state, batch, key)
  log("TFLOP per step: " + ", ".join(f"{k} {v / 1e12:.4f}" for k, v in out.items()))
  return out


# --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="example: python benchmarks/gpu_recipe.py --out $OUT")
  p.add_argument("--out", default=os.environ.get("OUT", "gpu_run"), help="output folder (default $OUT)")
  p.add_argument("--tiny", action="store_true", help="the CPU smoke run (configs/gpu.py:tiny)")
  p.add_argument("--anatomy", default=str(ASSETS / "anatomy.npz"))
  p.add_argument("--real", default=str(ASSETS / "real_scans.npz"), help="carried real-scan sets ('' to skip)")
  p.add_argument("--real-sets", type=int, default=None,
                 help="evaluate only the first N real-scan sets (default all 14; 2 with --tiny)")
  p.add_argument("--budget-s", type=float, default=None,
                 help="whole-run wall time the step counts are rescaled to (default 480; 0: the config's counts)")
  p.add_argument("--eval-reserve-s", type=float, default=100.0, help="seconds kept for export + evaluation")
  p.add_argument("--calibration-steps", type=int, default=None)
  p.add_argument("--set", action="append", default=[], metavar="GROUP.FIELD=VALUE",
                 help="config override, e.g. --set train.compute_dtype='bfloat16' (Python literal)")
  p.add_argument("--estimate", action="store_true", help="print FLOPs per step of the config and exit")
  p.add_argument("--check", action="store_true", help="trace the batch and the steps (no compile), print JSON, exit")
  p.add_argument("--make-assets", action="store_true", help="rebuild benchmarks/gpu_assets/*.npz and exit")
  a = p.parse_args(argv)
  if a.make_assets:
    make_assets(ASSETS)
    return 0

  t_start = time.perf_counter()
  times: dict[str, float] = {}
  log = functools.partial(print, flush=True)
  cfg = gpu_config.get_config("tiny" if a.tiny else None)
  for item in a.set:
    path, _, value = item.partition("=")
    *groups, field = path.split(".")
    node = cfg
    for g in groups:
      node = node[g]
    node[field] = ast.literal_eval(value)
  budget = (0.0 if a.tiny else 480.0) if a.budget_s is None else a.budget_s
  real_sets = a.real_sets if a.real_sets is not None else (2 if a.tiny else None)
  n_cal = a.calibration_steps if a.calibration_steps is not None else (1 if a.tiny else 5)
  slices = template_slices(Path(a.anatomy), int(cfg.data.voxel_mm), int(cfg.data.canvas))
  if a.estimate:
    estimate(cfg, slices, log)
    return 0
  if a.check:
    print(json.dumps(check(cfg, slices)))
    return 0
  out = Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  log(f"devices: {jax.devices()}; carried wheels on sys.path: {_ADDED_WHEELS or 'none'}")
  times["setup"] = time.perf_counter() - t_start

  # ---- compile: the batch generator, then the stages' steps (timed on a few batches)
  t = time.perf_counter()
  batch_fn, n_combos = make_batch_fn(cfg, slices)
  data_key = jax.random.fold_in(jax.random.key(cfg.seed), DATA_BRANCH)
  jax.block_until_ready(batch_fn(data_key))
  times["compile_batch"] = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(n_cal):
    jax.block_until_ready(batch_fn(data_key))
  batch_s = (time.perf_counter() - t) / max(n_cal, 1)
  setup, state = trainer.make_setup(cfg)
  steps = trainer.make_steps(setup)
  t = time.perf_counter()
  compile_s, per_step = warm_and_time(steps, setup, state, batch_fn, data_key, n_cal)
  per_step = {k: v + batch_s / int(cfg.data.batches_per_draw) for k, v in per_step.items()}
  times["compile_steps+calibrate"] = time.perf_counter() - t
  log(f"compiled: batch {times['compile_batch']:.1f} s ({n_combos} coil branches), steps "
      + ", ".join(f"{k} {v:.1f} s" for k, v in compile_s.items()) + "; per step: batch "
      f"{1e3 * batch_s:.1f} ms per draw of {cfg.data.batches_per_draw}, " + ", ".join(
      f"{k} {1e3 * v:.1f} ms" for k, v in per_step.items()))

  # ---- fit the step counts to the budget. The LR schedules depend on them, so new counts mean a
  # new setup and compiling the steps again: done only when the config's counts would overrun the
  # budget or use less than 2/3 of it.
  factor = 1.0
  if budget > 0:
    left = budget - (time.perf_counter() - t_start) - a.eval_reserve_s
    projected = sum(int(cfg.train[f"{s}_steps"]) * v for s, v in per_step.items())
    if not 0.67 * left <= projected <= left:
      left -= sum(compile_s.values())
      factor = rescale(cfg, per_step, left)
      setup, state = trainer.make_setup(cfg)
      steps = trainer.make_steps(setup)
      log(f"step counts × {factor:.2f} to train in {left:.0f} s: AE {cfg.train.ae_steps}, diffusion "
          f"{cfg.train.diffusion_steps}, fidelity {cfg.train.fidelity_steps}, joint {cfg.train.joint_steps}")

  # ---- train
  t = time.perf_counter()
  state, history = train(cfg, setup, steps, state, batch_fn, log)
  times["train"] = time.perf_counter() - t

  # ---- export: what `mri-jax restore --checkpoint` reads
  t = time.perf_counter()
  config_json = json.loads(cfg.to_json_best_effort())
  export = checkpoints.save_weights(out / "weights", config_json, state.inference_params())
  times["export"] = time.perf_counter() - t

  # ---- evaluate: held-out on-device batches, then the carried real scans through the export
  t = time.perf_counter()
  synthetic, images = eval_synthetic(cfg, setup, state, batch_fn)
  times["eval_synthetic"] = time.perf_counter() - t
  log("held-out synthetic: " + ", ".join(f"{k} {v:.4g}" for k, v in synthetic.items()))
  real_rows, shown, skipped = [], {}, []
  if a.real and Path(a.real).is_file():
    t = time.perf_counter()
    model = restore.load_model(out / "weights")
    stop_at = t_start + budget + 45.0 if budget > 0 else float("inf")
    real_rows, shown, skipped = eval_real(model, load_real_sets(Path(a.real), real_sets),
                                          restore.restore_n4_settings(model), log, stop_at)
    times["eval_real"] = time.perf_counter() - t
  else:
    log(f"no real-scan sets at '{a.real}': skipped")
  times["total"] = time.perf_counter() - t_start

  # ---- reports
  import flax

  res = {
      "config_name": "configs/gpu.py" + (":tiny" if a.tiny else ""),
      "command": " ".join(["python", "benchmarks/gpu_recipe.py", *(sys.argv[1:] if argv is None else argv)]),
      "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
      "versions": {"jax": jax.__version__, "flax": flax.__version__}, "carried_wheels": _ADDED_WHEELS,
      "times_s": {k: round(v, 2) for k, v in times.items()},
      "compile_s": {k: round(v, 2) for k, v in compile_s.items()},
      "train": {"ae_steps": int(cfg.train.ae_steps), "diffusion_steps": int(cfg.train.diffusion_steps),
                "fidelity_steps": trainer.fidelity_steps(cfg), "joint_steps": trainer.joint_steps(cfg), "batch": int(cfg.train.batch),
                "scale_factor": factor, "batch_seconds": batch_s,
                "seconds_per_step": {k: round(v, 5) for k, v in per_step.items()}},
      "history": history, "synthetic": synthetic, "real": real_rows, "real_summary": real_summary(real_rows),
      "real_skipped": skipped,
      "export": export, "config": config_json,
  }
  (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
  (out / "results.md").write_text(markdown(res))
  np.savez_compressed(out / "samples.npz", **{f"synthetic/{k}": v for k, v in (images or {}).items()},
                      **{f"real/{k}": v for k, v in shown.items()})
  log(f"done in {times['total']:.0f} s: {out / 'results.md'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
