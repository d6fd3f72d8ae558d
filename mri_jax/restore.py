"""Restore MRI scans with a trained restorer: noise and bias field removed in K network passes.

  model = restore.load_model()                 # the shipped default weights (no download)
  out = restore.restore_array(volume, model)   # 2-D (X, Y) or 3-D (X, Y, Z) magnitude image
  restore.restore_nifti("scan.nii.gz", "restored.nii.gz")

How an image goes through (the same preparation the training slices had):
1. 3-D volumes are cut into 2-D slices along one axis (`axis`; default: the thickest voxels, or
   for isotropic voxels the axis closest to the head's superior–inferior direction, i.e. axial
   slices as in training); 2-D images are one slice.
2. Foreground = Otsu's mask of the whole image (as N4's default). Each slice is divided by its mean
   inside that mask (slices with < 64 foreground voxels use the image's foreground mean) — the
   model sees foreground mean 1, as in training — and zero-padded to a multiple of the model's
   downsampling.
3. N4 per slice (JAX or SimpleITK backend, the dataset builder's settings) gives the conditioning
   (the N4-corrected slice and its log field); `n4='none'` conditions on the corrupted slice twice
   and a zero field (only sensible for models trained that way, e.g. the no_n4 ablation).
4. The restoration sampler runs K steps (default: the model's configured single pass), slices in
   batches of `batch_size`, one compiled program per (batch, padded shape).
5. The output is cropped, multiplied back by each slice's scale (so it is on the input's intensity
   scale, with the bias removed) and clipped at 0 (magnitude images).
6. Slices of a volume whose foreground is under 64 voxels or under 10% of the largest slice's
   (the caps above and below the anatomy, which the model never saw in training) are passed
   through unchanged.

Checkpoints: `load_model(None)` loads `mri_jax/weights/default/` (config.json + model.npz, the
exported EMA weights); `load_model(DIR)` loads an exported DIR the same way, or a training workdir
(config.json + orbax checkpoints/, its latest step).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mri_jax.errors import UserInputError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "default"
N4_CHOICES = ("jax", "sitk", "none")
MIN_FOREGROUND = 64  # voxels a slice needs to get its own intensity scale
PASS_THROUGH_FRACTION = 0.1  # slices with less foreground than this × the largest slice's are not restored


@dataclasses.dataclass
class Model:
  """A restorer ready to run: config, the trainer's `Setup` and the weights (AE + EMA UNet)."""

  config: ml_collections.ConfigDict
  setup: object
  params: dict
  source: str
  _fns: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def factor(self) -> int:
    """Total downsampling: images are padded to a multiple of it."""
    from mri_jax.train import trainer

    return trainer.downsampling(self.config)

  @property
  def default_steps(self) -> int:
    return int(self.config.schedule.sample_steps)

  @property
  def max_steps(self) -> int:
    return int(self.config.schedule.steps)


# --------------------------------------------------------------------------------------------
# Loading and exporting weights
# --------------------------------------------------------------------------------------------
def _flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflat(template, flat: dict[str, np.ndarray], what: str):
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for p, x in paths:
    k = jax.tree_util.keystr(p)
    if k not in flat or flat[k].shape != x.shape:
      raise UserInputError(f"{what}: weights do not match the model in its config.json "
                           f"({k} {'missing' if k not in flat else f'has shape {flat[k].shape}, expected {x.shape}'})")
    leaves.append(jnp.asarray(flat[k], x.dtype))
  return jax.tree.unflatten(treedef, leaves)


def _read_config(directory: Path) -> ml_collections.ConfigDict:
  path = directory / "config.json"
  if not path.is_file():
    raise UserInputError(f"checkpoint '{directory}' has no config.json (expected a training workdir or "
                         "a folder written by `mri-jax export-weights`)")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except (ValueError, OSError) as err:
    raise UserInputError(f"cannot read '{path}': {err}") from None


def _weights_template(cfg):
  from mri_jax.train import trainer

  setup, state = trainer.init_state(cfg)
  return setup, {"ae": state.get("ae"), "ema_unet": state["ema_unet"]}


def load_workdir_state(workdir) -> tuple[ml_collections.ConfigDict, object, dict, int]:
  """(config, setup, full train state, step) of the latest checkpoint of a training workdir."""
  import orbax.checkpoint as ocp

  from mri_jax.train import trainer

  workdir = Path(workdir).resolve()
  cfg = _read_config(workdir)
  setup, state = trainer.init_state(cfg)
  ckpt = workdir / "checkpoints"
  mgr = ocp.CheckpointManager(ckpt) if ckpt.is_dir() else None
  step = mgr.latest_step() if mgr is not None else None
  if step is None:
    raise UserInputError(f"workdir '{workdir}' holds no checkpoint yet")
  leaves, treedef = jax.tree.flatten(state)
  abstract = {f"{i:05d}": ocp.utils.to_shape_dtype_struct(x) for i, x in enumerate(leaves)}
  try:
    restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  except Exception as err:  # orbax raises many types for unreadable / mismatched checkpoints
    raise UserInputError(f"cannot read checkpoint step {step} in '{ckpt}' ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]})") from None
  finally:
    mgr.close()
  state = jax.tree.unflatten(treedef, [restored["state"][f"{i:05d}"] for i in range(len(leaves))])
  return cfg, setup, state, int(step)


def load_model(checkpoint=None) -> Model:
  """The restorer in `checkpoint` (None: the shipped default weights).

  Raises:
    UserInputError: a missing/unreadable checkpoint or one whose weights do not fit its config.
  """
  directory = WEIGHTS_DIR if checkpoint is None else Path(checkpoint)
  if not directory.is_dir():
    if checkpoint is None:
      raise UserInputError(f"the default weights are missing from the installation ({directory})")
    raise UserInputError(f"--checkpoint '{checkpoint}' is not a directory")
  npz = directory / "model.npz"
  if npz.is_file():
    cfg = _read_config(directory)
    try:
      setup, template = _weights_template(cfg)
    except Exception as err:  # a config.json that does not describe a model
      raise UserInputError(f"'{directory / 'config.json'}' does not describe a restorer ({type(err).__name__}: {err})") from None
    try:
      with np.load(npz) as z:
        flat = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
      raise UserInputError(f"cannot read '{npz}': {err}") from None
    params = {"ema_unet": _unflat(template["ema_unet"], {k[len("ema_unet"):]: v for k, v in flat.items()
                                                         if k.startswith("ema_unet")}, str(npz))}
    if template["ae"] is not None:
      params["ae"] = _unflat(template["ae"], {k[len("ae"):]: v for k, v in flat.items() if k.startswith("ae[")
                                              or k.startswith("ae.")}, str(npz))
    return Model(cfg, setup, params, str(directory))
  cfg, setup, state, step = load_workdir_state(directory)
  params = {"ema_unet": state["ema_unet"]}
  if state.get("ae") is not None:
    params["ae"] = state["ae"]
  return Model(cfg, setup, params, f"{directory} (step {step})")


def export_weights(workdir, out_dir) -> dict:
  """Writes the latest checkpoint's inference weights (AE + EMA UNet) and config to `out_dir`.

  The result (config.json + model.npz, float32) is what `load_model(out_dir)` reads and what
  ships in `mri_jax/weights/default/`. Files are written atomically.
  """
  from mri_jax.io.nifti import atomic_write_bytes
  import io

  cfg, _, state, step = load_workdir_state(workdir)
  flat = {"ema_unet" + k: v for k, v in _flat(state["ema_unet"]).items()}
  if state.get("ae") is not None:
    flat.update({"ae" + k: v for k, v in _flat(state["ae"]).items()})
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  np.savez_compressed(buf, **{k: v.astype(np.float32) for k, v in sorted(flat.items())})
  atomic_write_bytes(out / "model.npz", buf.getvalue())
  meta = json.loads(cfg.to_json_best_effort())
  meta["exported_from_step"] = step
  atomic_write_bytes(out / "config.json", json.dumps(meta, indent=2).encode())
  return {"step": step, "bytes": len(buf.getvalue()), "arrays": len(flat), "path": str(out)}


# --------------------------------------------------------------------------------------------
# Restoring arrays
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RestoreResult:
  """Restored image (input's shape and intensity scale); the N4 field used (None without N4);
  the foreground mask; the slicing axis (None for 2-D); seconds per stage."""

  image: np.ndarray
  field: np.ndarray | None
  mask: np.ndarray
  axis: int | None
  seconds: dict


def auto_axis(shape, spacing=None, affine=None) -> int:
  """Slicing axis for a 3-D volume: the thickest voxels, else the one closest to superior–inferior."""
  if spacing is not None:
    sp = np.asarray(spacing, float)
    if sp.max() > 1.2 * np.min(sp):
      return int(np.argmax(sp))
  if affine is not None:
    directions = np.abs(np.asarray(affine, float)[:3, :3])
    directions = directions / np.maximum(np.linalg.norm(directions, axis=0, keepdims=True), 1e-12)
    return int(np.argmax(directions[2]))  # world z (superior) component of each voxel axis
  return len(shape) - 1


def _make_fn(model: Model, k: int):
  """The jitted K-step restorer of `model` (cached on the model: one compile per shape)."""
  from mri_jax.train import trainer

  if k in model._fns:
    return model._fns[k]

  @jax.jit
  def run(params, corrupted, n4, log_field, key):
    state = {"ema_unet": params["ema_unet"], "ae": params.get("ae")}
    return trainer.restore_normalised(model.setup, state, corrupted[..., None], n4[..., None],
                                      log_field[..., None], key, k=k)

  model._fns[k] = run
  return run


def _n4_slices(slices: np.ndarray, masks: np.ndarray, backend: str, batch_size: int):
  """(N4-corrected, log field) of normalised slices; slices with no foreground pass unchanged."""
  from mri_jax import n4
  from mri_jax.data import pairs

  corrected, log_field = slices.copy(), np.zeros_like(slices)
  if backend == "none":
    return corrected, log_field
  settings = n4.N4Settings(iterations=pairs.PairsConfig().n4_iterations)
  idx = np.flatnonzero(masks.reshape(len(masks), -1).sum(axis=1) >= MIN_FOREGROUND)
  for start in range(0, len(idx), batch_size):
    sel = idx[start:start + batch_size]
    if backend == "jax":
      pad = np.concatenate([sel, np.repeat(sel[-1:], batch_size - len(sel))]) if len(idx) > batch_size else sel
      res = n4.n4_batch(slices[pad], masks[pad], settings=settings)
      corrected[sel] = np.asarray(res.corrected)[:len(sel)]
      log_field[sel] = np.asarray(res.log_field)[:len(sel)]
    else:
      for i in sel:
        r = n4.n4_sitk(slices[i], masks[i], settings=settings)
        corrected[i], log_field[i] = r.corrected, r.log_field
  return corrected, log_field


def check_image(data: np.ndarray, name: str = "input") -> None:
  """Raises UserInputError for images the restorer cannot take (shape, NaN/Inf, constant)."""
  if data.ndim not in (2, 3):
    raise UserInputError(f"{name} must be 2-D or 3-D, got shape {data.shape}")
  if data.size == 0 or min(data.shape) < 1:
    raise UserInputError(f"{name} is empty (shape {data.shape})")
  if not np.all(np.isfinite(data)):
    raise UserInputError(f"{name} holds NaN or Inf values")
  if float(data.max()) <= 0.0:
    raise UserInputError(f"{name} has no positive voxel; the restorer takes magnitude images")
  if float(data.max()) == float(data.min()):
    raise UserInputError(f"{name} is constant ({float(data.max()):g}); there is nothing to restore")
  if data.ndim == 2 and min(data.shape) < 8 or data.ndim == 3 and sorted(data.shape)[1] < 8:
    raise UserInputError(f"{name} is too small to restore (shape {data.shape}; slices need ≥ 8×8 voxels)")


def restore_array(data: np.ndarray, model: Model | None = None, *, steps: int | None = None, seed: int = 0,
                  n4: str = "jax", batch_size: int = 16, axis: int | None = None, spacing=None,
                  affine=None, progress: bool = False) -> RestoreResult:
  """Restores a 2-D or 3-D magnitude image (see the module docstring for the steps).

  Args:
    data: (X, Y) or (X, Y, Z) array (X×Y×1 is treated as 2-D).
    model: from `load_model` (default: the shipped weights).
    steps: sampler steps K, 1 … the schedule's T (default: the model's configured K).
    seed: sampler seed (the output depends on it only for stochastic/noise-started schedules).
    n4: 'jax', 'sitk' or 'none' — N4 backend of the conditioning.
    batch_size: slices per network call.
    axis: slicing axis of a 3-D volume (default `auto_axis`).
    spacing, affine: voxel size and affine, used only to choose the axis.
    progress: show a progress bar on stderr.
  """
  from tqdm.auto import tqdm

  from mri_jax.n4 import otsu_mask

  model = load_model() if model is None else model
  data = np.asarray(data, np.float32)
  squeeze = data.ndim == 3 and data.shape[-1] == 1
  vol = data[..., 0] if squeeze else data
  check_image(vol)
  k = model.default_steps if steps is None else int(steps)
  if not 1 <= k <= model.max_steps:
    raise UserInputError(f"--steps must be in [1, {model.max_steps}] for this model, got {steps}")
  if n4 not in N4_CHOICES:
    raise UserInputError(f"--n4 must be one of {N4_CHOICES}, got {n4!r}")
  if batch_size < 1:
    raise UserInputError(f"--batch-size must be ≥ 1, got {batch_size}")
  if seed < 0:
    raise UserInputError(f"--seed must be a non-negative integer, got {seed}")
  times = {}
  t0 = time.perf_counter()
  if vol.ndim == 3:
    ax = auto_axis(vol.shape, spacing, affine) if axis is None else int(axis)
    if not 0 <= ax <= 2:
      raise UserInputError(f"--axis must be 0, 1 or 2 for a 3-D image, got {axis}")
    slices = np.moveaxis(vol, ax, 0)
  else:
    ax, slices = None, vol[None]
  slices = np.maximum(slices, 0.0)  # magnitude images: negative values (rare, from resampling) → 0
  mask = np.asarray(otsu_mask(slices if vol.ndim == 3 else slices[0])).reshape(slices.shape)
  if not mask.any():
    raise UserInputError("no foreground found (Otsu's mask is empty)")
  fg_mean = float(slices[mask].mean())
  counts = mask.reshape(len(slices), -1).sum(axis=1)
  # Slices with (almost) no anatomy — the caps of a volume — were never in training: pass them through.
  anatomy = counts >= max(MIN_FOREGROUND, PASS_THROUGH_FRACTION * counts.max())
  sums = (slices * mask).reshape(len(slices), -1).sum(axis=1)
  scale = np.where(counts >= MIN_FOREGROUND, sums / np.maximum(counts, 1), fg_mean).astype(np.float32)
  scale = np.maximum(scale, 1e-12)
  norm = slices / scale[:, None, None]
  f = model.factor
  nx, ny = norm.shape[1:]
  px, py = -(-nx // f) * f, -(-ny // f) * f
  pads = ((0, 0), ((px - nx) // 2, px - nx - (px - nx) // 2), ((py - ny) // 2, py - ny - (py - ny) // 2))
  norm_p, mask_p = np.pad(norm, pads), np.pad(mask, pads)
  n4_img, n4_log = _n4_slices(norm_p, mask_p, n4, batch_size)
  times["n4"] = time.perf_counter() - t0
  t1 = time.perf_counter()
  run = _make_fn(model, k)
  out = np.zeros_like(norm_p)
  n = len(norm_p)
  bs = min(batch_size, n)
  key = jax.random.key(seed)
  batches = range(0, n, bs)
  for i, start in enumerate(tqdm(batches, desc="restoring", unit="batch", disable=not progress or len(batches) < 2,
                                 file=sys.stderr)):
    sel = np.arange(start, min(start + bs, n))
    pad_sel = np.concatenate([sel, np.repeat(sel[-1:], bs - len(sel))])  # one shape → one compile
    res = run(model.params, jnp.asarray(norm_p[pad_sel]), jnp.asarray(n4_img[pad_sel]),
              jnp.asarray(n4_log[pad_sel]), jax.random.fold_in(key, i))
    out[sel] = np.asarray(res)[:len(sel)]
  times["network"] = time.perf_counter() - t1
  crop = (slice(None), slice(pads[1][0], pads[1][0] + nx), slice(pads[2][0], pads[2][0] + ny))
  restored = np.maximum(out[crop], 0.0) * scale[:, None, None]
  restored[~anatomy] = slices[~anatomy]
  field = None if n4 == "none" else np.exp(n4_log[crop])
  if vol.ndim == 3:
    restored, mask_o = np.moveaxis(restored, 0, ax), np.moveaxis(mask, 0, ax)
    field = None if field is None else np.moveaxis(field, 0, ax)
  else:
    restored, mask_o, field = restored[0], mask[0], None if field is None else field[0]
  if squeeze:
    restored, mask_o = restored[..., None], mask_o[..., None]
    field = None if field is None else field[..., None]
  if not np.all(np.isfinite(restored)):  # never write a silently wrong image
    raise RuntimeError("the restorer produced non-finite values; please report this input")
  times["total"] = time.perf_counter() - t0
  return RestoreResult(restored.astype(np.float32), None if field is None else field.astype(np.float32),
                       mask_o, ax, times)


def restore_nifti(input_path, output_path, *, checkpoint=None, steps=None, seed: int = 0, n4: str = "jax",
                  batch_size: int = 16, axis: int | None = None, save_field=None, overwrite: bool = False,
                  progress: bool = False) -> dict:
  """Restores a 2-D/3-D NIfTI into `output_path` (header, affine and voxel size kept; atomic write).

  `save_field` receives the multiplicative N4 field the restorer was conditioned on (slice-wise,
  as computed for the network), so input ≈ field × N4-corrected image.

  Raises:
    UserInputError: bad input, options or checkpoint; output path problems. Nothing is written then.
  """
  from mri_jax.io import nifti
  from mri_jax.workflows import check_outputs

  if save_field is not None and n4 == "none":
    raise UserInputError("--save-field needs an N4 field: use --n4 jax or --n4 sitk")
  out, field_out = check_outputs(output_path, save_field, input_path, overwrite=overwrite)
  img = nifti.load_nifti(input_path)
  model = load_model(checkpoint)
  res = restore_array(img.data, model, steps=steps, seed=seed, n4=n4, batch_size=batch_size, axis=axis,
                      spacing=img.spacing, affine=img.image.affine, progress=progress)
  nifti.save_nifti_like(out, res.image, img, description="mri-jax restore")
  if field_out is not None:
    nifti.save_nifti_like(field_out, res.field, img, description="mri-jax restore n4 field")
  k = model.default_steps if steps is None else int(steps)
  return dict(shape=list(img.data.shape), axis=res.axis, steps=k, n4=n4, model=model.source,
              seconds=res.seconds, foreground_voxels=int(res.mask.sum()))
