"""The field network: a small CNN that corrects what N4 leaves of the bias field.

N4 sharpens the log-intensity histogram; on real scans, whose tissue histograms are broad, that
criterion hardly moves, and most of a strong receive field stays in the N4 image (on the
real-scan validation set N4 removes a third of the simulator's field; with the true field
instead of N4's, restore would score 0.967 instead of 0.922 SSIM). The field network is trained
on the simulator's fields (`mri_jax.data.pairs`, through the training records) to predict the
rest: given the N4 image, N4's log field and the foreground mask of a slice, it predicts a
smooth residual log field on a coarse grid, and restore divides it out as well.

The network works on a fixed 64 × 64 grid (the slice padded to a square and resized), predicts
the residual on a 16 × 16 grid, and that is resized back (cubic) to the slice: a field with no
detail finer than 1/16 of the field of view. Its last layer starts at zero, so an untrained
network leaves N4's field exactly as it is.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mri_jax.models.nets import _up
from mri_jax.models.restorer import padded_batch

GRID = 64        # the network's input grid (a slice padded to a square and resized)
OUT_GRID = 16    # the predicted residual's grid
LOG_FLOOR = 0.05  # the N4 image (foreground mean 1) enters as log(max(x, LOG_FLOOR)) in the mask
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights" / "field"
# The shipped weights' recipe (`mri-jax train-field`, `mri_jax.train.field.run`).
DEFAULT_DATASETS = ("mri_pairs/mixed128", "mri_pairs/mixed128fine")
DEFAULT_VALIDATION = "mri_pairs/mixed128"
DEFAULT_STEPS = 6000
# Re-corrupted copies of each record (`mri_jax.train.field.recorrupt`): none in the shipped recipe.
# One copy each (8,000 steps) gave the same validation RMS (0.187 vs 0.186 on the records' fields,
# 0.155 vs 0.158 on re-corrupted ones) and a slightly lower restore on the real-scan set (seed 0,
# 4 slices per group, w 0.75: 0.942 / 0.952 / 0.987 vs 0.942 / 0.954 / 0.986 simulator /
# independent / clean; RESULTS, ninth pass), so it was not shipped.
DEFAULT_AUGMENT = 0


@dataclasses.dataclass(frozen=True)
class FieldConfig:
  channels: tuple[int, ...] = (16, 32, 64, 64)  # 64, 32, 16, 8 pixels


class _Block(nnx.Module):
  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
    self.c1 = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
    self.n1 = nnx.GroupNorm(cout, num_groups=min(8, cout), rngs=rngs)
    self.c2 = nnx.Conv(cout, cout, (3, 3), rngs=rngs)
    self.n2 = nnx.GroupNorm(cout, num_groups=min(8, cout), rngs=rngs)
    self.skip = nnx.Conv(cin, cout, (1, 1), rngs=rngs) if cin != cout else None

  def __call__(self, x):
    h = self.n2(self.c2(nnx.silu(self.n1(self.c1(x)))))
    return nnx.silu(h + (self.skip(x) if self.skip is not None else x))


class FieldNet(nnx.Module):
  """(N, GRID, GRID, 3) features → (N, OUT_GRID, OUT_GRID) residual log field."""

  def __init__(self, config: FieldConfig = FieldConfig(), *, rngs: nnx.Rngs):
    ch = tuple(config.channels)
    levels = int(round(np.log2(GRID // OUT_GRID)))
    assert len(ch) == levels + 2, "channels: one per level from GRID down to OUT_GRID / 2"
    self.enc = nnx.List([_Block(3 if i == 0 else ch[i - 1], c, rngs=rngs) for i, c in enumerate(ch)])
    self.down = nnx.List([nnx.Conv(c, c, (3, 3), strides=(2, 2), rngs=rngs) for c in ch[:-1]])
    self.dec = _Block(ch[-1] + ch[-2], ch[-2], rngs=rngs)
    self.head = nnx.Conv(ch[-2], 1, (3, 3), kernel_init=nnx.initializers.zeros, rngs=rngs)

  def __call__(self, x):
    skips = []
    for i, block in enumerate(self.enc):
      x = block(x)
      skips.append(x)
      if i < len(self.down):
        x = self.down[i](x)
    x = _up(x)  # OUT_GRID / 2: up once and join the OUT_GRID level
    x = self.dec(jnp.concatenate([x, skips[-2]], axis=-1))
    return self.head(x)[..., 0]


# --------------------------------------------------------------------------------------------
# Grids: any slice shape ↔ the network's square grid
# --------------------------------------------------------------------------------------------
def _square_pads(shape) -> tuple[tuple[int, int], tuple[int, int]]:
  s = max(shape)
  return tuple(((s - n) // 2, s - n - (s - n) // 2) for n in shape)


def to_grid(x: np.ndarray, size: int = GRID) -> np.ndarray:
  """(N, X, Y) → (N, size, size): zero-padded (centred) to a square, then resized (linear, with
  anti-aliasing when shrinking)."""
  x = np.asarray(x, np.float32)
  (ax, bx), (ay, by) = _square_pads(x.shape[1:])
  sq = np.pad(x, ((0, 0), (ax, bx), (ay, by)))
  return np.asarray(jax.image.resize(jnp.asarray(sq), (len(x), size, size), "linear"))


def from_grid(g: np.ndarray, shape) -> np.ndarray:
  """(N, g, g) → (N, X, Y): resized (cubic) to the padded square of `shape`, then cropped."""
  (ax, bx), (ay, by) = _square_pads(shape)
  s = max(shape)
  up = np.asarray(jax.image.resize(jnp.asarray(g, jnp.float32), (len(g), s, s), "cubic"))
  return up[:, ax:ax + shape[0], ay:ay + shape[1]]


def _masked_mean(x: np.ndarray, m: np.ndarray) -> np.ndarray:
  cnt = np.maximum(m.reshape(len(m), -1).sum(1), 1)
  return ((x * m).reshape(len(x), -1).sum(1) / cnt)[:, None, None]


def features(n4_image: np.ndarray, n4_log: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """(N, GRID, GRID, 3) network input from (N, X, Y) slices: the N4 image's log (foreground mean 1,
  0 outside the mask), N4's log field (its mean in the mask removed), the mask."""
  m = np.asarray(mask, bool)
  mf = m.astype(np.float32)
  img = np.asarray(n4_image, np.float32)
  img = img / np.maximum(_masked_mean(img, mf), 1e-12)
  logi = np.where(m, np.log(np.maximum(img, LOG_FLOOR)), 0.0)
  lf = np.asarray(n4_log, np.float32)
  lf = lf - _masked_mean(lf, mf)
  return np.stack([to_grid(logi), to_grid(lf), to_grid(mf)], axis=-1).astype(np.float32)


def _predictor(model: FieldNet):
  """x (N, GRID, GRID, 3) → the network's prediction resized to (N, GRID, GRID): one program of
  (parameters, x) through `compile_cache.cached_call`, so a later process with the cache on reads
  the traced program instead of tracing the network again. The model is split once here, not per
  batch."""
  from mri_jax import compile_cache

  graphdef, state = nnx.split(model)
  leaves, treedef = jax.tree.flatten(state)

  def fn(leaves, x):
    net = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
    return jax.image.resize(net(x), (x.shape[0], GRID, GRID), "cubic")

  # the architecture is fixed by the parameters' shapes, which key the program with x's
  return lambda x: compile_cache.cached_call(f"fieldnet-g{GRID}-o{OUT_GRID}", fn, leaves, x)


def _dihedral(a: np.ndarray, k: int, inverse: bool = False) -> np.ndarray:
  """One of the 8 flips/transposes of (N, G, G, ...) arrays (`inverse`: undo it)."""
  ops = [lambda x: np.swapaxes(x, 1, 2)] if k & 4 else []
  ops += [lambda x: x[:, ::-1]] if k & 1 else []
  ops += [lambda x: x[:, :, ::-1]] if k & 2 else []
  for op in (ops[::-1] if inverse else ops):
    a = op(a)
  return np.ascontiguousarray(a)


# Test-time augmentation: the prediction is the mean over the grid's 8 flips / transposes (undone).
# On the real-scan set (seed 0, 4 slices per group, weight 0.75) 8 against 1: restore SSIM
# simulator 0.940 / 0.941, independent 0.952 / 0.951, clean scans 0.987 / 0.986, and dipy's b0
# group, the one the network misreads most, 0.955 / 0.952 (independent) and 0.987 / 0.982 (clean).
TTA = 8


def residual(model: FieldNet, n4_image: np.ndarray, n4_log: np.ndarray, mask: np.ndarray,
             batch: int = 32) -> np.ndarray:
  """(N, X, Y) residual log field for slices with their N4 image, N4 log field and mask (its mean in
  the mask is 0): the mean of the network's predictions over the `TTA` flips / transposes of the
  grid. Batches are padded to `batch` (fewer slices: the next power of two) so few shapes compile."""
  feats0 = features(n4_image, n4_log, mask)
  batch = padded_batch(len(feats0), batch)  # few slices: a small padded batch
  predict = _predictor(model)
  preds = []
  for k in range(TTA):
    feats = _dihedral(feats0, k)
    out = []
    for i in range(0, len(feats), batch):
      f = feats[i:i + batch]
      pad = np.concatenate([f, np.repeat(f[-1:], batch - len(f), 0)]) if len(f) < batch else f
      out.append(np.asarray(predict(jnp.asarray(pad)))[:len(f)])
    preds.append(_dihedral(np.concatenate(out), k, inverse=True))
  g = np.mean(preds, axis=0)
  r = from_grid(g, np.shape(n4_image)[1:])
  m = np.asarray(mask, np.float32)
  return (r - _masked_mean(r, m)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------
def _keyed_params(model: FieldNet) -> tuple[dict, object]:
  """{parameter path: array} of the model's parameters, and the treedef to rebuild them."""
  state = nnx.state(model, nnx.Param)
  flat, treedef = jax.tree_util.tree_flatten_with_path(state)

  def name(path):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)

  return {name(path): leaf for path, leaf in flat}, treedef


def save(model: FieldNet, config: FieldConfig, out_dir, info: dict | None = None) -> Path:
  """Writes config.json + params.npz (one array per parameter, keyed by its path) into `out_dir`,
  each through a temporary file renamed into place."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  params, _ = _keyed_params(model)
  meta = {"channels": list(config.channels), "grid": GRID, "out_grid": OUT_GRID, **(info or {})}
  tmpj = out / f".config.json.{os.getpid()}.tmp"
  tmpj.write_text(json.dumps(meta, indent=1) + "\n")
  tmp = out / f".params.npz.{os.getpid()}.tmp"
  with open(tmp, "wb") as f:
    np.savez(f, **{k: np.asarray(v) for k, v in params.items()})
  tmp.replace(out / "params.npz")
  tmpj.replace(out / "config.json")
  return out


def _abstract(config: FieldConfig):
  """(graph definition, abstract state) of the network: its structure only, no random
  initialisation (that cost ≈ 1 s of eager operations per process), kept in the compilation cache
  when it is on (as `Restorer.from_config` keeps the restorer's)."""
  from mri_jax import compile_cache

  def build():
    return nnx.split(nnx.eval_shape(lambda: FieldNet(config, rngs=nnx.Rngs(0))))

  return compile_cache.cached_value("fieldnet-abstract", json.dumps(list(config.channels)), build)


def load(directory=None) -> FieldNet:
  """The field network from `directory` (default: the shipped weights). Raises ValueError when
  the files do not describe this network (other grids, missing / extra / misshapen parameters)."""
  d = WEIGHTS_DIR if directory is None else Path(directory)
  meta = json.loads((d / "config.json").read_text())
  if meta.get("grid") != GRID or meta.get("out_grid") != OUT_GRID:
    raise ValueError(f"{d}: field network grids {meta.get('grid')}/{meta.get('out_grid')} ≠ {GRID}/{OUT_GRID}")
  config = FieldConfig(channels=tuple(meta["channels"]))
  model = nnx.merge(*_abstract(config))
  template, treedef = _keyed_params(model)
  with np.load(d / "params.npz") as z:
    stored = {k: z[k] for k in z.files}
  if set(stored) != set(template):
    missing, extra = sorted(set(template) - set(stored)), sorted(set(stored) - set(template))
    raise ValueError(f"{d}: parameters missing {missing[:3]}, unexpected {extra[:3]}")
  for k, t in template.items():
    if stored[k].shape != t.shape:
      raise ValueError(f"{d}: parameter {k} has shape {stored[k].shape}, {t.shape} expected")
    if not np.all(np.isfinite(stored[k])):
      raise ValueError(f"{d}: parameter {k} holds NaN or Inf")
  nnx.update(model, jax.tree_util.tree_unflatten(treedef, [jnp.asarray(stored[k], t.dtype) for k, t in template.items()]))
  return model
