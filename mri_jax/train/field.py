"""Training the field network (`mri_jax.models.fieldnet`) on the training records.

For each record: Otsu's mask of the corrupted slice, N4 with restore's settings on it (what
restore will hand the network), the network's features, and the target — the true log field
minus N4's, on the network's grid, weighted by the record's foreground. The loss is the weighted
mean squared error after removing each slice's weighted mean (a field is known up to a scale).
Batches are drawn by a seeded numpy generator with the 8 flips/transposes of the square grid:
same records + same seed ⇒ same weights on the same machine.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mri_jax.models import fieldnet


# Re-corrupted copies of the records (`prepare(augment=...)`), so the network does not learn the
# simulator's coil fields only: each copy takes the record's corrupted slice and, with equal odds,
# multiplies a random smooth field onto it, replaces the simulator's field by one, or divides the
# field out (an image with no field at all, which N4 may still "correct"). Multiplying the
# magnitude image scales its noise too, as a receive field does.
AUGMENT_KINDS = ("sim x random", "random only", "no field")
RANDOM_LOG_STD = (0.03, 0.35)  # the random field's log std over the foreground (the records': 0.23 mean)


def random_log_field(fg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A random smooth log field on a slice (X, Y), mean 0 and std drawn from RANDOM_LOG_STD over the
  foreground `fg`: a sum of plane waves of up to 1.5 cycles across the foreground's bounding box
  (amplitude falling with frequency), plus up to two Gaussian bumps centred near its edge (a
  surface coil's hot spot)."""
  fg = np.asarray(fg, bool)
  xs, ys = np.nonzero(fg) if fg.any() else np.nonzero(np.ones_like(fg))
  cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
  hx, hy = max(xs.max() - xs.min(), 4) / 2, max(ys.max() - ys.min(), 4) / 2
  u, v = np.meshgrid((np.arange(fg.shape[0]) - cx) / hx, (np.arange(fg.shape[1]) - cy) / hy, indexing="ij")
  f = np.zeros(fg.shape)
  for _ in range(6):
    k = rng.uniform(-0.75, 0.75, 2) * np.pi  # ≤ 1.5 cycles over [-1, 1]
    f += rng.standard_normal() / (1 + k @ k) * np.cos(k[0] * u + k[1] * v + rng.uniform(0, 2 * np.pi))
  for _ in range(int(rng.integers(3))):
    a = rng.uniform(0, 2 * np.pi)
    c = rng.uniform(0.6, 1.2) * np.array([np.cos(a), np.sin(a)])
    w = rng.uniform(0.4, 1.0)
    f += rng.uniform(0.3, 1.0) * np.exp(-((u - c[0]) ** 2 + (v - c[1]) ** 2) / (2 * w * w))
  f -= f[fg].mean() if fg.any() else f.mean()
  sd = f[fg].std() if fg.any() else f.std()
  return (f * rng.uniform(*RANDOM_LOG_STD) / max(sd, 1e-6)).astype(np.float32)


def recorrupt(corrupted: np.ndarray, bias: np.ndarray, fg: np.ndarray, kind: str,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(re-corrupted slice, its true log field) for one of AUGMENT_KINDS (see above)."""
  true_log = np.log(np.maximum(bias, 1e-6)).astype(np.float32)
  if kind == "no field":
    new_log = np.zeros_like(true_log)
  elif kind == "random only":
    new_log = random_log_field(fg, rng)
  elif kind == "sim x random":
    new_log = true_log + random_log_field(fg, rng)
  else:
    raise ValueError(f"unknown augmentation {kind!r}; one of {AUGMENT_KINDS}")
  return (corrupted * np.exp(new_log - true_log)).astype(np.float32), new_log


def _records(src, n: int, augment: int, seed: int, originals: bool = True):
  """(corrupted, mask, true log field) per slice: the `n` records as stored (unless not
  `originals`), then `augment` re-corrupted copies of each (kinds in turn from a seeded start, one
  generator per copy, so the copies do not depend on `originals`)."""
  for i in range(n if originals else 0):
    r = src[i]
    yield (np.asarray(r["corrupted"], np.float32), np.asarray(r["mask"], bool),
           np.log(np.maximum(np.asarray(r["bias"], np.float32), 1e-6)))
  for a in range(augment):
    for i in range(n):
      r = src[i]
      rng = np.random.default_rng([seed, a, i])
      kind = AUGMENT_KINDS[(i + a + int(rng.integers(len(AUGMENT_KINDS)))) % len(AUGMENT_KINDS)]
      fg = np.asarray(r["mask"], bool)
      y, log_b = recorrupt(np.asarray(r["corrupted"], np.float32), np.asarray(r["bias"], np.float32), fg, kind, rng)
      yield y, fg, log_b


def prepare(data_dir, dataset: str, split: str, n4_settings, *, limit: int | None = None, batch: int = 32,
            augment: int = 0, seed: int = 0, originals: bool = True, log=print) -> dict:
  """(features, target, weight) arrays on the network's grid for the records of one split, and
  `augment` re-corrupted copies of each (`recorrupt`); `originals=False`: the copies only."""
  from tqdm.auto import tqdm

  from mri_jax import n4
  from mri_jax.data import pipeline
  from mri_jax.n4 import otsu_mask

  src = pipeline.data_source(dataset, split, data_dir=data_dir)
  n = len(src) if limit is None else min(limit, len(src))
  total = n * (int(originals) + augment)
  feats, targets, weights = [], [], []
  it = _records(src, n, augment, seed, originals)
  for start in tqdm(range(0, total, batch), desc=f"N4 of {dataset} {split}", unit="batch", leave=False):
    recs = [next(it) for _ in range(min(batch, total - start))]
    corrupted = np.stack([r[0] for r in recs])
    fg = np.stack([r[1] for r in recs])
    true_log = np.stack([r[2] for r in recs])
    masks = np.stack([np.asarray(otsu_mask(x)) for x in corrupted])
    pad = batch - len(recs)
    res = n4.n4_batch(np.concatenate([corrupted, np.repeat(corrupted[-1:], pad, 0)]),
                      np.concatenate([masks, np.repeat(masks[-1:], pad, 0)]), settings=n4_settings)
    n4_log = np.asarray(res.log_field)[:len(recs)]
    n4_img = corrupted * np.exp(-n4_log)
    feats.append(fieldnet.features(n4_img, n4_log, masks))
    targets.append(fieldnet.to_grid(true_log - n4_log))
    weights.append(fieldnet.to_grid(fg.astype(np.float32)))
  out = {"x": np.concatenate(feats), "y": np.concatenate(targets), "w": np.concatenate(weights)}
  log(f"{dataset} {split}: " + (f"{n} slices" if originals else "")
      + (f"{' + ' if originals else ''}{n * augment} re-corrupted copies" if augment else ""))
  return out


def loss_fn(model, x, y, w):
  """Weighted MSE of (prediction − target) after removing each slice's weighted mean."""
  pred = jax.image.resize(model(x), y.shape, "cubic")
  d = pred - y
  ws = jnp.maximum(w.sum(axis=(1, 2), keepdims=True), 1e-6)
  d = d - (d * w).sum(axis=(1, 2), keepdims=True) / ws
  return ((d ** 2 * w).sum(axis=(1, 2)) / ws[:, 0, 0]).mean()


def evaluate_rms(model, data: dict, batch: int = 64) -> tuple[float, float]:
  """(RMS residual log field of N4 alone, RMS after the network) over `data`, weighted, mean-free."""
  def rms(d, w):
    ws = np.maximum(w.sum(axis=(1, 2), keepdims=True), 1e-6)
    d = d - (d * w).sum(axis=(1, 2), keepdims=True) / ws
    return float(np.sqrt((d ** 2 * w).sum() / ws.sum()))

  predict = fieldnet._predictor(model)
  preds = []
  for i in range(0, len(data["x"]), batch):
    preds.append(np.asarray(predict(jnp.asarray(data["x"][i:i + batch]))))
  pred = np.concatenate(preds)
  return rms(-data["y"], data["w"]), rms(pred - data["y"], data["w"])


def train(train_data: dict, val_data: dict | None, *, steps: int, seed: int = 0, batch: int = 32, lr: float = 1e-3,
          config: fieldnet.FieldConfig = fieldnet.FieldConfig(), log=print, log_every: int = 500) -> fieldnet.FieldNet:
  """Adam with cosine decay for `steps` batches; returns the trained network."""
  model = fieldnet.FieldNet(config, rngs=nnx.Rngs(seed))
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, min(200, steps // 10 + 1), steps, lr * 0.02)
  opt = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched)), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, x, y, w):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y, w)
    opt.update(model, grads)
    return loss

  rng = np.random.default_rng(seed)
  n = len(train_data["x"])
  t0, run = time.perf_counter(), []
  for s in range(1, steps + 1):
    idx = np.sort(rng.choice(n, batch, replace=False))
    k = int(rng.integers(8))
    x, y, w = (fieldnet._dihedral(train_data[key][idx], k) for key in ("x", "y", "w"))
    run.append(float(step(model, opt, jnp.asarray(x), jnp.asarray(y), jnp.asarray(w))))
    if s % log_every == 0 or s == steps:
      msg = f"step {s}/{steps}  loss {np.mean(run):.5f}  {time.perf_counter() - t0:.0f} s"
      if val_data is not None:
        before, after = evaluate_rms(model, val_data)
        msg += f"  validation RMS log field: N4 {before:.4f} → {after:.4f}"
      log(msg)
      run = []
  return model


DEFAULT_DATASETS = fieldnet.DEFAULT_DATASETS
DEFAULT_VALIDATION = fieldnet.DEFAULT_VALIDATION
DEFAULT_STEPS = fieldnet.DEFAULT_STEPS
DEFAULT_AUGMENT = fieldnet.DEFAULT_AUGMENT


def run(out_dir, *, data_dir, datasets=DEFAULT_DATASETS, validation: str | None = DEFAULT_VALIDATION,
        steps: int = DEFAULT_STEPS, augment: int = DEFAULT_AUGMENT, seed: int = 0, batch: int = 32,
        lr: float = 1e-3, limit: int | None = None, overwrite: bool = False, log=print) -> dict:
  """`mri-jax train-field`: prepares the records' train splits (and `validation`'s validation split)
  with restore's N4 (`restore.restore_n4_settings` of the shipped restorer), with `augment`
  re-corrupted copies of every record (`recorrupt`; the validation split is reported both as
  stored and re-corrupted), trains, and writes the weights (config.json + params.npz) into
  `out_dir`. Returns the summary stored in config.json.

  Raises:
    UserInputError: bad options, a dataset that is not built in `data_dir`, or an `out_dir` that
      already holds weights (without `overwrite`). Nothing is written then.
  """
  from pathlib import Path

  from mri_jax import restore
  from mri_jax.errors import UserInputError

  if steps < 1:
    raise UserInputError(f"--steps must be ≥ 1, got {steps}")
  if not 1 <= batch <= 1024:
    raise UserInputError(f"--batch-size must be in [1, 1024], got {batch}")
  if not 0 < lr < 1:
    raise UserInputError(f"--lr must be in (0, 1), got {lr}")
  if not 0 <= augment <= 8:
    raise UserInputError(f"--augment must be in [0, 8], got {augment}")
  if seed < 0:
    raise UserInputError(f"--seed must be a non-negative integer, got {seed}")
  out = Path(out_dir)
  if (out / "params.npz").exists() and not overwrite:
    raise UserInputError(f"'{out}' already holds field network weights (use --overwrite to replace them)")
  if out.exists() and not out.is_dir():
    raise UserInputError(f"'{out}' exists and is not a directory")
  if not datasets:
    raise UserInputError("give at least one --dataset")
  for name in (*datasets, *([validation] if validation else [])):
    if not (Path(data_dir) / name).is_dir():
      raise UserInputError(f"dataset '{name}' is not built in '{data_dir}' (build it with mri-jax build-data "
                           f"--config {name.split('/')[-1]} --data-dir {data_dir})")
  settings = restore.restore_n4_settings(restore.load_model(None))
  parts = [prepare(data_dir, d, "train", settings, limit=limit, augment=augment, seed=seed, log=log)
           for d in datasets]
  if sum(len(p["x"]) for p in parts) < batch:
    raise UserInputError(f"{sum(len(p['x']) for p in parts)} training slices: fewer than one batch of {batch}")
  train_data = {k: np.concatenate([p[k] for p in parts]) for k in "xyw"}
  val_data = prepare(data_dir, validation, "validation", settings, limit=limit, log=log) if validation else None
  model = train(train_data, val_data, steps=steps, seed=seed, batch=batch, lr=lr, log=log,
                log_every=max(1, min(500, steps // 10)))
  info = dict(datasets=list(datasets), steps=steps, augment=augment, seed=seed, batch=batch, lr=lr,
              train_slices=len(train_data["x"]),
              n4=dict(iterations=list(settings.iterations), shrink=settings.shrink, min_shrunk=settings.min_shrunk))
  if val_data is not None:
    before, after = evaluate_rms(model, val_data)
    info["validation"] = dict(dataset=validation, rms_log_field_n4=round(before, 5), rms_log_field_refined=round(after, 5))
    if augment:
      val_aug = prepare(data_dir, validation, "validation", settings, limit=limit, augment=1, seed=seed + 1,
                        originals=False, log=log)
      before, after = evaluate_rms(model, val_aug)
      info["validation_recorrupted"] = dict(rms_log_field_n4=round(before, 5), rms_log_field_refined=round(after, 5))
  fieldnet.save(model, fieldnet.FieldConfig(), out, info)
  return info
