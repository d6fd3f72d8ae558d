"""Restore MRI scans with a trained restorer: noise and bias field removed in K network passes.

  model = restore.load_model()                 # the shipped default weights (no download)
  out = restore.restore_array(volume, model)   # 2-D (X, Y) or 3-D (X, Y, Z) magnitude image
  restore.restore_nifti("scan.nii.gz", "restored.nii.gz")

How an image goes through (the same preparation the training slices had):
0. A frame of exact zeros around the image (padding after resampling, skull stripping or a
   reformat) is cropped to the positive voxels' bounding box grown by a quarter of its size on each
   side (`nonzero_box`): zeros beyond that margin change nothing, and they stay zero (the field
   continues there by its edge values).
1. 3-D volumes are cut into 2-D slices along one axis (`axis`; default: the thickest voxels, or
   for isotropic voxels the axis closest to the head's superior–inferior direction, i.e. axial
   slices as in training); 2-D images are one slice.
2. Otsu's mask of the whole image (N4's mask; one threshold per slice with
   `independent_slices`). Slices of a volume whose foreground is under 64 voxels or under 10% of
   the largest slice's (the caps above and below the anatomy, which the model never saw in
   training) skip N4 and the network (step 7); with `independent_slices` only the 64-voxel rule
   applies (unrelated images: none is another's cap).
3. N4 (JAX or SimpleITK backend, the settings the model's data was made with, the fit on ≥ 64
   voxels per axis: `restore_n4_settings`): one 3-D N4 of the
   whole volume (`n4_mode` 'volume', or 'auto' for ≥ 8 slices with anatomy), else per slice
   ('slices', 2-D images, `independent_slices`); `n4='none'` conditions on the corrupted slice
   twice and a zero field (only for models trained that way, e.g. the no_n4 ablation). The field
   network (`field_net`, default weight 0.75: `mri_jax.models.fieldnet`) then predicts the smooth
   log field N4 left in each slice, and N4's field times exp(weight × it) is the field every later
   step uses ("the N4-corrected input" below is the input divided by it).
4. Each slice is divided by its mean over the non-air foreground (above 0.2 × Otsu's threshold,
   as the training records' masks; slices with < 64 foreground voxels use the image's foreground
   mean) — the model sees foreground mean 1, as in training — and zero-padded to a size bucket
   (`restorer.bucket_shape`: multiples of 16 up to 256) so that few shapes are ever compiled.
5. The restoration sampler runs K steps (default: the model's configured single pass), slices in
   batches of `batch_size` (fewer slices: the next power of two), one compiled program per
   (batch, bucket), kept across processes by `mri_jax.compile_cache` when the CLI turned it on.
6. The output is cropped, multiplied back by each slice's scale (so it is on the input's intensity
   scale, with the bias removed) and clipped at 0 (magnitude images). The low-frequency fix
   (`lowfreq`, default 1 px) takes its content coarser than that scale from the N4-corrected input
   (for a volume's 3-D N4 with one scale for the whole volume, so slice means follow the 3-D
   correction: no slice-to-slice banding); the SURE blend (`blend`, default on) then keeps, in the
   tissue (the non-air foreground and any anatomy standing above the noise floor, `_signal`,
   grown by 2 voxels), the fraction α of the change to the
   N4-corrected input that minimises Stein's unbiased estimate of the error — the change of the
   N4-corrected input filtered with the network's output as the pilot (`wiener`, default on:
   `_pilot_wiener`, BM3D's second step, run `WIENER_PASSES` times), or of the network's own
   output (`_sure_blend`: one more network pass with a small noise probe; one α per band of the
   change, coarser / finer than 1 px; per slice, or per volume with a 3-D N4),
   so where the network would do worse than its input, the output falls back towards the input;
   the noise clamp (`noise_clamp`, default 2) keeps every tissue voxel within k noise σ of the
   N4-corrected input; in the air beyond, the network may remove the noise entirely. The physics
   consistency check (`mri_jax.consistency`) then scores each restored slice. Last, the noise
   floor of the magnitude (`noise_floor`, default on: `_remove_floor`) is taken out: the output so
   far estimates the expected magnitude, which the root sum of squares of L coils raises in dark
   tissue and air; it is mapped back to the noise-free magnitude with each slice's (L, σ) read from
   its air (`consistency.noise_floor`).
7. The cap slices of step 2 are passed through unchanged, or with a volume's 3-D N4 only divided
   by its field (on the restored slices' scale), so the bias does not jump where restoring stops.

The network, its preparation of the input (steps 3–4) and the sampler live in
`mri_jax.models.restorer`, shared with training; weights are read by `mri_jax.checkpoints`.
This module never imports `mri_jax.train`.

Checkpoints: `load_model(None)` loads `mri_jax/weights/default/` (config.json + model.npz, the
exported EMA weights); `load_model(DIR)` loads an exported DIR the same way, or a training workdir
(config.json + orbax checkpoints/, its latest step). N4 runs with the iterations the model's data
was made with (`model.n4_iterations` in its config).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mri_jax import checkpoints, consistency
from mri_jax.errors import UserInputError
from mri_jax.io import nifti
from mri_jax.models import restorer as R

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "default"
# The shipped fast weights (`configs/mixed.py:fast`, `mri-jax restore --fast`): a network 3.4× faster
# (≈ 50 ms against ≈ 175 ms per 256² slice on the 2-core CPU), restore's SSIM within 0.0013 of the
# default weights on every test set (benchmarks/RESULTS.md, seventeenth pass of issue 15).
FAST_WEIGHTS_DIR = WEIGHTS_DIR.parent / "fast"
N4_CHOICES = R.N4_BACKENDS
MIN_FOREGROUND = R.MIN_FOREGROUND
PASS_THROUGH_FRACTION = 0.1  # slices with less foreground than this × the largest slice's are not restored
DEFAULT_BATCH_SIZE = 16
# `nonzero_box` grows the box of the positive voxels by this fraction of its size on each side (within
# the array): the image keeps an air margin as the training slices had. Measured (restore SSIM against
# the clean slice; do-no-harm inputs; a 4 mm slice in a 4× frame: correlation with the clean slice):
# margin 0 / 0.1 / 0.25 / 0.5 / no crop: example4d clean 0.958 / 0.959 / 0.961 / 0.962 / 0.962 (its
# zero frame is 61 % of the image), phantom 0.982 / 0.981 / 0.981 / 0.981 / 0.981, the framed slices
# 0.987, 0.894, 0.913 (alone, without the frame) / 0.989, 0.904, 0.889 / 0.993, 0.903, 0.889 /
# 0.995, 0.887, 0.859 / 0.948, 0.764, 0.756.
FRAME_MARGIN = 0.25
# The low-frequency fix's σ in pixels (`restore_array(lowfreq=...)`): on by default. Measured with
# the shipped model: the demo volume SSIM 0.878 → 0.928 and PSNR 22.8 → 27.2 dB; real-scan slices
# (4 groups × 4 slices, clean / simulator / independent inputs) 0.84 / 0.62 / 0.77 → 0.90 / 0.81 / 0.88.
DEFAULT_LOWFREQ = 1.0
# The noise clamp's k (`restore_array(noise_clamp=...)`): the output stays within k noise σ of the
# N4-corrected input at every voxel. Chosen on the validation data (the second-pass mixed model, K = 1;
# sweep k = 0, 1, 1.5, 2, 3): real-scan set (4 slices per group) SSIM
# simulator 0.752 / 0.768 / 0.761 / 0.757 / 0.754, independent 0.867 / 0.899 / 0.889 / 0.881 / 0.873,
# clean scans as input 0.901 / 0.948 / – / 0.922 / 0.911; demo PSNR 28.1 (k 0) / 29.6 (k 1) /
# 28.6 dB (k 3); the synthetic mixed128 validation split prefers k ≥ 2 (SSIM 0.821 at k 1, 0.833 at k 2-3).
# Re-checked on the residual model (at 2,000 of its 6,000 fidelity steps; real-scan set with seed 0,
# k = 0 / 1 / 2): simulator 0.846 / 0.870 / 0.855, independent 0.858 / 0.888 / 0.870, clean 0.894 / 0.947 (k 0 / 1).
# Since the SURE blend (on by default) the clamp acts after it, as a safety rail, at k = 2: on the
# real-scan set (seed 0, 4 slices per group, shipped residual model) a one-band blend + k = 0 / 2
# gave SSIM simulator 0.895 / 0.895, independent 0.921 / 0.921, clean scans 0.970 / 0.970 (the
# blend alone rarely leaves 2σ); the shipped two bands + k = 2 0.894 / 0.921 / 0.969; the previous
# default (no blend, k = 1) 0.874 / 0.896 / 0.949.
DEFAULT_NOISE_CLAMP = 2.0
DEFAULT_BLEND = True
# The noise floor's removal (`restore_array(noise_floor=...)`, `_remove_floor`): on by default.
DEFAULT_NOISE_FLOOR = True


def anatomy_slices(counts: np.ndarray, independent: bool = False) -> np.ndarray:
  """(N,) bool: the slices restored, from their (N,) foreground voxel counts; the others (the caps
  of a volume) have under MIN_FOREGROUND voxels or under PASS_THROUGH_FRACTION of the fullest's.
  `independent`: the slices are unrelated images (`restore_array(independent_slices=True)`), so a
  slice is judged on its own count alone (≥ MIN_FOREGROUND): a small image or one whose Otsu
  foreground is small is not a cap of another slice's volume. (Compared with the fullest slice,
  3 of the 48 synthetic test slices went out unrestored, raw input, bias and noise kept.)"""
  if independent:
    return counts >= MIN_FOREGROUND
  return counts >= max(MIN_FOREGROUND, PASS_THROUGH_FRACTION * counts.max())


@dataclasses.dataclass
class Model:
  """A restorer ready to run: its config, networks (`Restorer`) and weights {"ae", "unet" (EMA), "fid"}."""

  config: ml_collections.ConfigDict
  restorer: R.Restorer
  params: dict
  source: str
  _fns: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def factor(self) -> int:
    """Total downsampling: images are padded to a multiple of it."""
    return self.restorer.factor

  @property
  def default_steps(self) -> int:
    return int(self.config.schedule.sample_steps)

  @property
  def max_steps(self) -> int:
    return int(self.config.schedule.steps)

  @property
  def conditioned_on_n4(self) -> bool:
    return bool(self.config.model.condition_n4)


# --------------------------------------------------------------------------------------------
# Loading and exporting weights
# --------------------------------------------------------------------------------------------
def _restorer_of(cfg, directory: Path) -> R.Restorer:
  try:
    return R.Restorer.from_config(cfg)
  except Exception as err:  # a config.json that does not describe a model
    raise UserInputError(f"'{directory / checkpoints.CONFIG_FILE}' does not describe a restorer "
                         f"({type(err).__name__}: {err})") from None


def choose_weights(checkpoint=None, fast: bool = False):
  """The weights to load: `checkpoint`, or the shipped fast weights (`FAST_WEIGHTS_DIR`) with
  `fast` (None: the shipped default weights). Raises UserInputError for both at once."""
  if not fast:
    return checkpoint
  if checkpoint:
    raise UserInputError("--fast and --checkpoint both choose the weights: give one of them")
  return str(FAST_WEIGHTS_DIR)


def load_model(checkpoint=None) -> Model:
  """The restorer in `checkpoint` (None: the shipped default weights; `FAST_WEIGHTS_DIR`: the
  shipped fast ones).

  Raises:
    UserInputError: a missing/unreadable checkpoint, one whose weights do not fit its config, or
      weights that are not finite.
  """
  directory = WEIGHTS_DIR if checkpoint is None else Path(checkpoint)
  if not directory.is_dir():
    if checkpoint is None or directory == FAST_WEIGHTS_DIR:
      which = "default" if checkpoint is None else "fast"
      raise UserInputError(f"the {which} weights are missing from the installation ({directory})")
    raise UserInputError(f"--checkpoint '{checkpoint}' is not a directory")
  cfg = checkpoints.read_config(directory)
  restorer = _restorer_of(cfg, directory)
  template = restorer.abstract_params()
  if (directory / checkpoints.WEIGHTS_FILE).is_file():
    params = checkpoints.load_weights(directory, template)
    return Model(cfg, restorer, params, str(directory))
  step = checkpoints.latest_step(directory)
  if step is None:
    raise UserInputError(f"'{directory}' holds neither {checkpoints.WEIGHTS_FILE} nor a training checkpoint")
  ckpt = checkpoints.Checkpointer(Path(directory) / "checkpoints")
  try:
    saved = ckpt.restore_named(step)
  finally:
    ckpt.close()
  what = f"checkpoint step {step} in '{directory}'"
  stored = {"ae": "ae", "unet": "ema_unet", "fid": "fid"}  # params entry → TrainState field
  params = {name: None if template[name] is None else checkpoints.from_named(template[name], saved.get(field) or {}, what)
            for name, field in stored.items()}
  params = jax.tree.map(lambda x, t: jnp.asarray(x, t.dtype), params, template)
  checkpoints.check_finite(params, what)
  return Model(cfg, restorer, params, f"{directory} (step {step})")


def export_weights(workdir, out_dir) -> dict:
  """Writes the latest checkpoint's inference weights (AE + EMA UNet) and config to `out_dir`.

  The result (config.json + model.npz, float32) is what `load_model(out_dir)` reads and what
  ships in `mri_jax/weights/default/`. Files are written atomically.
  """
  nifti.check_folder(out_dir, "OUT_DIR")
  step = None if (Path(workdir) / checkpoints.WEIGHTS_FILE).is_file() else checkpoints.latest_step(workdir)
  if step is None:
    raise UserInputError(f"'{workdir}' is not a training workdir with a checkpoint")
  model = load_model(workdir)
  meta = json.loads(model.config.to_json_best_effort())
  meta["exported_from_step"] = step
  return {"step": step, **checkpoints.save_weights(out_dir, meta, model.params)}


# --------------------------------------------------------------------------------------------
# Restoring arrays
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RestoreResult:
  """Restored image (input's shape and intensity scale); the N4 field used (None without N4);
  the foreground mask; the slicing axis (None for 2-D); seconds per stage; the physics
  consistency check (`mri_jax.consistency`: per-slice `energy` and `structure` in slicing order,
  `flagged` slice indices, `residual` map r / σ̂ in the input's shape; None when not run); the SURE
  blend's (N, `blend_weight_count`) weights in slicing order: the bands of the change weighed,
  coarsest first (with the Wiener filter: the filtered change's bands, then the network's own);
  NaN where not blended; None when the blend is off or there is no N4; the noise floor removed
  (`_remove_floor`): (N, 3) effective coils L, σ and 1 where both were read from the slice's air
  (0: L = 1 and the input's σ), NaN where not removed; None when off or there is no N4."""

  image: np.ndarray
  field: np.ndarray | None
  mask: np.ndarray
  axis: int | None
  seconds: dict
  consistency: dict | None = None
  blend: np.ndarray | None = None
  noise_floor: np.ndarray | None = None


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


def _make_fn(model: Model, k: int, fidelity_weight: float | None = None):
  """The K-step restorer of `model` as run(params, corrupted, n4, log_field, key) (a jitted program
  per input shape, kept across processes by `compile_cache.cached_call` when the cache is on)."""
  if (k, fidelity_weight) in model._fns:
    return model._fns[k, fidelity_weight]
  from mri_jax import compile_cache

  treedef = jax.tree.structure(model.params)
  arch = hashlib.sha256(model.config.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:16]
  name = f"restorer-{arch}-k{k}-w{fidelity_weight}"

  def fn(leaves, corrupted, n4, log_field, key_data):
    params = jax.tree.unflatten(treedef, leaves)
    key = jax.random.wrap_key_data(key_data)
    return model.restorer.restore(params, corrupted[..., None], n4[..., None], log_field[..., None], key, k=k,
                                  fidelity_weight=fidelity_weight)

  def run(params, corrupted, n4, log_field, key):
    return compile_cache.cached_call(name, fn, jax.tree.leaves(params), corrupted, n4, log_field,
                                     jax.random.key_data(key))

  model._fns[k, fidelity_weight] = run
  return run


def _scaled_reference(restored: np.ndarray, n4_img: np.ndarray, mask: np.ndarray, *,
                      one_scale: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(the N4 image on the restored slices' scale, the (N,) factors that put it there): each slice
  scaled to the restored slice's foreground mean, or with `one_scale` one factor for the whole
  stack (a volume's 3-D N4 image, so each slice's mean follows the N4 image rather than the
  network)."""
  if one_scale:
    total = float(n4_img[mask].sum())
    factors = np.full(len(n4_img), float(restored[mask].sum()) / total if total > 0 else 1.0)
  else:
    factors = np.array([x[m].mean() / max(float(y[m].mean()), 1e-12) if m.sum() >= MIN_FOREGROUND else 1.0
                        for x, y, m in zip(restored, n4_img, mask)])
  return n4_img * factors[:, None, None].astype(n4_img.dtype), factors


def _lowfreq_fix(restored: np.ndarray, reference: np.ndarray, sigma: float) -> np.ndarray:
  """Per slice: restored − G∗restored + G∗reference (the scaled N4 image), G a Gaussian of σ
  pixels; clipped at 0."""
  from scipy import ndimage

  out = np.empty_like(restored)
  for i, (x, y) in enumerate(zip(restored, reference)):
    out[i] = x - ndimage.gaussian_filter(x, sigma) + ndimage.gaussian_filter(y, sigma)
  return np.maximum(out, 0.0)


# The noise clamp acts inside the tissue (below) grown by this many voxels; in the air beyond, the
# network may remove the (Rayleigh) noise entirely.
CLAMP_MARGIN = 2
# The tissue of the clamp and the blend is the non-air foreground (`restorer.scale_foreground`:
# above a fifth of Otsu's threshold) and every voxel whose 5×5 input mean stands above the air's
# noise floor by SIGNAL_K of that mean's std (`_signal`): dark anatomy, e.g. a dim region inside a
# bright scene, is anatomy however far below Otsu's threshold it lies, and keeps the clamp and the
# blend's fall-back to the input. In pure χ noise of 1 / 4 / 32 coils (512², `consistency.chi_mean`
# and its std) the 5×5 mean passes the floor + 4 std at 1.6e-4 / 3.8e-5 / 4.6e-5 of the voxels, + 5
# std at 3.8e-6 / 0 / 0 and + 6 std at none: 6 leaves room for a σ read 15 % low. On the synthetic
# test's lesion slices it lifted a hypo-intense lesion pair inside a dark ellipse from 73 to 92 % of
# its contrast (RESULTS, thirteenth pass).
SIGNAL_K = 6.0
SIGNAL_WINDOW = 5


def _input_sigmas(inputs: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """(N,) each input slice's noise σ (`consistency.input_sigma`); 0 on slices with fewer than
  MIN_FOREGROUND foreground voxels (no estimate)."""
  return np.array([consistency.input_sigma(x, m) if m.sum() >= MIN_FOREGROUND else 0.0 for x, m in zip(inputs, mask)],
                  np.float32)


def _read_floors(inputs: np.ndarray, mask: np.ndarray, sigma: np.ndarray, *, pooled: bool = False) -> np.ndarray:
  """(N, 3) (L, σ, read from the air: 1/0) of the input slices' noise: from each slice's air
  (`consistency.noise_floor`, else L = 1 with `sigma`, the input's σ). `pooled`: the slices are one
  volume's, one acquisition: (L, σ) are read once from all their air (the slices side by side), so
  small slices with little air each still get it."""
  if pooled:
    return np.tile(np.float32(consistency.noise_floor(np.concatenate(list(inputs)), np.concatenate(list(mask)),
                                                      float(np.median(sigma)))), (len(inputs), 1))
  return np.array([consistency.noise_floor(x, m, float(s)) for x, m, s in zip(inputs, mask, sigma)],
                  np.float32).reshape(len(inputs), 3)


def _signal(inputs: np.ndarray, floors: np.ndarray) -> np.ndarray:
  """(N, X, Y) where the input's SIGNAL_WINDOW² mean exceeds the air's noise floor (`floors`:
  `_read_floors`) by SIGNAL_K std of that mean: there is anatomy, however dark (see SIGNAL_K)."""
  from scipy import ndimage

  out = np.zeros(inputs.shape, bool)
  for i, (x, (coils, s, _)) in enumerate(zip(inputs, floors)):
    if s > 0:
      level = consistency.chi_mean(np.zeros(()), coils) + SIGNAL_K * consistency.chi_std(coils) / SIGNAL_WINDOW
      out[i] = ndimage.uniform_filter(x.astype(np.float64), SIGNAL_WINDOW) > float(level) * s
  return out


def _remove_floor(restored: np.ndarray, factors: np.ndarray, field: np.ndarray, floors: np.ndarray, *,
                  pooled: bool = False) -> np.ndarray:
  """The restored slices with the magnitude's noise floor removed. A denoised magnitude estimates
  E[M], which exceeds the noise-free magnitude A by the floor of the coils' root sum of squares
  (`consistency.chi_mean`: 1.25σ in the air for one coil, 8σ for 32; lesions and dark anatomy lose
  contrast, the air stays grey). With each slice's (L, σ) (`floors`, `_read_floors`) the output,
  carried to the input's scale (× field ÷ factor), is mapped through the inverse of E[M | A]
  (`consistency.unbias`) and back. Measured on the synthetic test's faithfulness slices with the
  true L and σ: SSIM 0.899 → 0.921, lesion contrast kept 79 / 84 → 92 / 94 %. `pooled`: one (L, σ)
  for all the slices (a volume's), mapped in one call."""
  out = restored.copy()
  groups = [np.arange(len(out))] if pooled else [[i] for i in range(len(out))]
  for rows in groups:
    coils, s = float(floors[rows[0], 0]), float(floors[rows[0], 1])
    if s <= 0:
      continue
    gain = field[rows] / factors[rows, None, None] / s  # output units → units of σ on the input's scale
    out[rows] = (consistency.unbias(restored[rows] * gain, coils) / gain).astype(out.dtype)
  return out


def _tissue(foreground: np.ndarray, inputs: np.ndarray, floors: np.ndarray) -> np.ndarray:
  """(N, X, Y) where restore treats the slices as tissue (the blend, the clamp, the caps' air):
  the `foreground` and any anatomy above the air's noise floor (`_signal`), grown by
  CLAMP_MARGIN voxels. The rest is air."""
  from scipy import ndimage

  return ndimage.binary_dilation(foreground | _signal(inputs, floors), np.ones((1, 3, 3), bool),
                                 iterations=CLAMP_MARGIN)


def _caps_without_floor(inputs: np.ndarray, mask: np.ndarray, field: np.ndarray, scale: float,
                        floor: np.ndarray) -> np.ndarray:
  """A volume's passed-through caps (the N4 image inputs ÷ field, × `scale`, the restored slices'
  scale) with the noise floor removed as on the restored slices, so the air does not jump from
  the grey floor to black where restoring stops (a band in coronal and sagittal views). The caps
  are not denoised: where the floor was read from the air and `_tissue` (Otsu's `mask` and
  `_signal`) finds no anatomy, the SIGNAL_WINDOW² local mean stands in for the expected magnitude
  (there it is at the floor, and `_remove_floor` takes it to ≈ 0; a single voxel's noise would pass
  through the floor's inverse as specks); their anatomy keeps its own voxels, and no voxel comes out
  above its N4 image. `floor`: the volume's pooled (L, σ, from the air)."""
  from scipy import ndimage

  image = inputs / field * scale
  if not floor[1] > 0:
    return image
  floors = np.repeat(np.asarray(floor, np.float32)[None], len(inputs), axis=0)
  air = ~_tissue(mask, inputs, floors) & (floor[2] == 1)
  local = ndimage.uniform_filter(image.astype(np.float64), (1, SIGNAL_WINDOW, SIGNAL_WINDOW))
  expected = np.where(air, local, image).astype(image.dtype)
  # never above the voxel itself: as on the restored slices, removing the floor only lowers
  return np.minimum(_remove_floor(expected, np.full(len(inputs), scale, np.float32), field, floors, pooled=True), image)


def _noise_clamp(restored: np.ndarray, reference: np.ndarray, factors: np.ndarray, inputs: np.ndarray,
                 field: np.ndarray, mask: np.ndarray, k: float, tissue: np.ndarray | None = None, *,
                 sigma: np.ndarray | None = None) -> np.ndarray:
  """The output may differ from the reference (the N4 image inputs ÷ field, × each slice's factor
  from `_scaled_reference`) by at most k noise σ per voxel: the input is field × image + noise, so
  a change larger than the noise can explain would be erased or invented anatomy. σ is each input
  slice's noise estimate (`consistency.input_sigma`), carried to the reference's scale
  (÷ field, × factor); `sigma`: those σ (`_input_sigmas`) when the caller has them already.
  `tissue`: where the clamp applies (default everywhere; restore passes the non-air foreground and
  the anatomy above the noise floor, `_signal`, grown by CLAMP_MARGIN voxels)."""
  sigma = _input_sigmas(inputs, mask) if sigma is None else sigma
  out = restored.copy()
  for i in range(len(out)):
    if mask[i].sum() < MIN_FOREGROUND:
      continue
    bound = k * sigma[i] * factors[i] / field[i]
    if tissue is not None:
      bound = np.where(tissue[i], bound, np.inf)
    out[i] = reference[i] + np.clip(restored[i] - reference[i], -bound, bound)
  return np.maximum(out, 0.0)


# The SURE blend (`restore_array(blend=...)`). The probe's size in noise σ: the restorer's output
# is piecewise smooth in its input, so a small finite difference measures its divergence. With
# 0.01 / 0.05 / 0.2, the real-scan set (seed 0, 4 slices per group) gave the same SSIM to 3 decimals.
BLEND_EPS = 0.05
# The blend's frequency bands: Gaussian σ in pixels of the splits (none: one α for the whole change).
# One split at 1 px (an α for the change's content coarser than 1 px, one for the finer): the demo
# 0.900 → 0.907 SSIM, 27.11 → 27.30 dB (its own brain-mask scoring: `demo` writes the official
# figures); the real-scan set (seed 0, 4 slices per group) unchanged within ±0.001.
BLEND_BANDS: tuple[float, ...] = (1.0,)
# The pilot Wiener filter inside the blend (`restore_array(wiener=...)`, `_pilot_wiener`): block
# side and stride of its sliding DCT (8 / 2 as BM3D's second step; 4 / 1 gave the same SSIM to
# ±0.001 on the real-scan set, seed 0, 4 slices per group).
WIENER_BLOCK, WIENER_STRIDE = 8, 2
# Passes of the filter: each later pass takes the previous pass's output as its pilot. Two passes
# against one (seed 0; synthetic test 48 slices; real-scan set 4 slices per group, simulator /
# independent corruption): SSIM 0.864 → 0.866, 0.940 → 0.942, 0.952 → 0.954, for ≈ 0.03 s more
# per 256² slice, paid twice (the output and the blend's probe). 3 / 4 / 6 passes gained ≈ 0.001
# each more (RESULTS, ninth pass).
WIENER_PASSES = 2
DEFAULT_WIENER = True
# With the filter, the blend also weighs the network's own change (unfiltered) beside the filtered
# image's: out = r + Σₖ αₖ (f − r)ₖ + Σₖ βₖ (g − r)ₖ over the bands, each weight in [0, 1] by SURE,
# both divergences from the same probe pass (no extra network pass). Against the filtered change
# alone (seed 0; synthetic test 48 slices; real-scan set, 4 slices per group, simulator /
# independent corruption): SSIM 0.866 → 0.869, 0.9117 → 0.9121, 0.9606 → 0.9610; do no harm
# unchanged to ±0.001 (RESULTS, tenth pass).
BLEND_NETWORK_TOO = True


def blend_weight_count(wiener: bool) -> int:
  """How many weights the SURE blend has per slice: one per band of each change it weighs."""
  return (len(BLEND_BANDS) + 1) * (2 if wiener and BLEND_NETWORK_TOO else 1)


# Restore's N4 fits the field on at least this many voxels per axis (`N4Settings.min_shrunk`:
# the shrink factor 4 is lowered on smaller images; a 256² slice keeps shrink 4). With the fit on
# 16 voxels (the default rule) N4 left most of the field on small images: on the real-scan set
# (seed 0, 4 slices per group) 64 raised restore's SSIM 0.907 → 0.922 (simulator) and 0.935 →
# 0.941 (independent), the 64² EPI 0.873 → 0.931; shrink 1 everywhere gave the same to ±0.001.
RESTORE_N4_MIN_SHRUNK = 64


def restore_n4_settings(model: Model):
  """The N4 settings restore uses: the model's (`restorer.n4_settings`: what its training records
  were made with) with the fit on ≥ RESTORE_N4_MIN_SHRUNK voxels per axis."""
  return dataclasses.replace(R.n4_settings(model.config), min_shrunk=RESTORE_N4_MIN_SHRUNK)


# The field network (`mri_jax.models.fieldnet`, weights in mri_jax/weights/field/): after N4,
# it predicts the smooth part of the bias field N4 left, and restore divides this share of it
# out too (0 = N4's field alone). On the real-scan set (seed 0, 4 slices per group; restore SSIM
# simulator / independent corruption / clean scans as input) weight 0: 0.922 / 0.941 / 0.981,
# 0.5: 0.938 / 0.950 / 0.986, 0.75: 0.941 / 0.951 / 0.986, 1: 0.943 / 0.950 / 0.985. At 1 the
# dipy b0 group fell below its input on the independent corruption (0.943 vs 0.952; 0.952 at
# 0.75): real scans are not the simulator's records, so the prediction is trusted by 3/4. (That
# sweep predates the 8-fold TTA, `fieldnet.TTA`; with it, at 0.75: 0.940 / 0.952 / 0.987.)
DEFAULT_FIELD_NET = 0.75
# With a volume's 3-D N4 the network's per-slice residuals are smoothed along the slicing axis by
# a Gaussian of this σ (slices), so the corrected field stays continuous through the volume; the
# caps (slices not restored) get the nearest restored slice's correction before smoothing.
FIELD_NET_SLICE_SIGMA = 2.0
_FIELD_NETS: dict = {}


def field_model():
  """The shipped field network, loaded once per process."""
  from mri_jax.models import fieldnet

  key = str(fieldnet.WEIGHTS_DIR)
  if key not in _FIELD_NETS:
    if not (fieldnet.WEIGHTS_DIR / "params.npz").is_file():
      raise UserInputError(f"the field network's weights are missing from the installation ({fieldnet.WEIGHTS_DIR}); "
                           "restore without it with --field-net 0")
    try:
      _FIELD_NETS[key] = fieldnet.load()
    except Exception as err:  # a damaged installation: one line, not a traceback
      raise UserInputError(f"the field network's weights in {fieldnet.WEIGHTS_DIR} cannot be read "
                           f"({type(err).__name__}: {err}); reinstall, or restore without them with "
                           "--field-net 0") from None
  return _FIELD_NETS[key]


def _field_residual(n4_image: np.ndarray, log_field: np.ndarray, mask: np.ndarray, weight: float) -> np.ndarray:
  """`weight` × the field network's (N, X, Y) residual log field for these N4 images, fields and masks."""
  from mri_jax.models import fieldnet

  return float(weight) * fieldnet.residual(field_model(), n4_image, log_field, mask)


def _volume_field_correction(slices: np.ndarray, log_field: np.ndarray, mask: np.ndarray, idx: np.ndarray,
                             weight: float) -> np.ndarray:
  """The (N, X, Y) correction of a volume's 3-D N4 log field: the field network's residual on the
  slices with anatomy (`idx`), the nearest such slice's on the others (the caps), then smoothed
  along the slicing axis (`FIELD_NET_SLICE_SIGMA`), so the field stays continuous through the
  volume and does not jump where restoring stops."""
  from scipy import ndimage

  res = _field_residual(slices[idx] * np.exp(-log_field[idx]), log_field[idx], mask[idx], weight)
  pos = np.clip(np.searchsorted(idx, np.arange(len(slices))), 0, len(idx) - 1)
  left = np.clip(pos - 1, 0, len(idx) - 1)
  nearest = np.where(np.abs(idx[left] - np.arange(len(slices))) < np.abs(idx[pos] - np.arange(len(slices))), left, pos)
  full = res[nearest]
  if len(full) > 1:
    full = ndimage.gaussian_filter1d(full, FIELD_NET_SLICE_SIGMA, axis=0, mode="nearest")
  return full.astype(np.float32)


def _sure_blend(restored: np.ndarray, reference: np.ndarray, factors: np.ndarray, inputs: np.ndarray,
                field: np.ndarray, mask: np.ndarray, tissue: np.ndarray, prep, network, batch: int, *,
                lowfreq, one_weight: bool, seed: int, sigma: np.ndarray | None = None,
                wiener: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(the blend, α (N, bands)): the N4 image r (`_scaled_reference`) plus each Gaussian band
  (`_bands`, `BLEND_BANDS`) of the restorer's change c = g − r times its own α ∈ [0, 1], the α
  minimising Stein's unbiased risk estimate of E‖r + Σₖ αₖ cₖ − x‖² over the Otsu mask, x the
  unknown clean image (Stein 1981; SURE-LET, Blu & Luisier 2007; Monte-Carlo divergence, Ramani,
  Blu & Unser 2008). SURE(α) = αᵀAα + 2αᵀd + const with Aₖₗ = ⟨cₖ, cₗ⟩ and
  dₖ = Σᵢ σᵢ² ∂cₖᵢ/∂rᵢ, minimised over the box [0, 1]^K (`_box_qp`). With one band:

    α = (Σ σᵢ² − Σ σᵢ² ∂gᵢ/∂rᵢ) / Σ (gᵢ − rᵢ)²,  clipped to [0, 1],

  σᵢ the noise σ of r at voxel i (the input's σ, `consistency.input_sigma`, ÷ field × factor). The divergences come
  from one more network pass on the input plus a small Gaussian probe b (size δ = BLEND_EPS σ):
  σᵢ² ∂cₖᵢ/∂rᵢ ≈ σ² (factor/field)ᵢ bᵢ Δcₖᵢ / δ, Δc the change of c under the probe. Under
  that noise model (white Gaussian noise of one σ per slice), the blend's expected error is never
  above that of the N4 image (α = 0) or of the network (α = 1), up to the estimate's own error —
  and it needs no clean image. Correlated or spatially varying noise (coil g-factors) makes it an
  approximation. With `wiener` (`_pilot_wiener`: r filtered with the network's output as the
  pilot) the change weighed is the filtered image's, and with `BLEND_NETWORK_TOO` the network's own
  change g − r too, each band with its own weight: α is then (filtered bands…, network bands…),
  `blend_weight_count` of them. SURE is scored on the Otsu mask; α is applied in `tissue` (the non-air
  foreground and the anatomy above the noise floor, grown by CLAMP_MARGIN voxels); the air keeps the
  network's output g, with a smooth transition. `one_weight`: one α per band for the whole volume
  (the volume's 3-D N4), estimated on the batch of slices holding the middle slice; else per slice,
  every batch probed. Slices without a noise estimate (too little foreground, σ = 0) are not
  blended (α NaN); nor is a volume when no slice of its probed batch has one.
  `network(batches, corrupted, n4)` reruns the network on prepared inputs; `batch` is its batch
  size. `sigma`: the slices' (N,) noise σ (`_input_sigmas`) when the caller has them already."""
  from scipy import ndimage

  n = len(restored)
  network_out = restored  # what the air keeps (the filter acts on tissue only)
  both = wiener and BLEND_NETWORK_TOO  # the network's own change is weighed too
  if wiener:  # every slice's σ: the filter runs on every slice, not only the probed ones
    sigma = _input_sigmas(inputs, mask) if sigma is None else sigma
    sigma_all = sigma
    noise_map = lambda i: sigma_all[i] * factors[i] / field[i]  # noqa: E731 (σ of the reference, per voxel)
    restored = np.stack([_pilot_wiener(reference[i], restored[i], noise_map(i)) if sigma_all[i] > 0 else restored[i]
                         for i in range(n)])
  n_batches = -(-n // batch)
  batches = [(n // 2) // batch] if one_weight else list(range(n_batches))  # one weight: the middle slice's batch
  rows = np.concatenate([np.arange(i * batch, min(i * batch + batch, n)) for i in batches])
  sigma = _input_sigmas(inputs[rows], mask[rows]) if sigma is None else sigma[rows]
  usable = sigma > 0  # per probed row: enough foreground and a noise estimate (σ = 0: nothing to weigh)
  n_bands = blend_weight_count(wiener)
  alphas = np.full((n, n_bands), np.nan, np.float32)
  if not usable.any():
    return network_out, alphas
  rng = np.random.default_rng(seed)
  probe = rng.standard_normal((len(rows),) + restored.shape[1:]).astype(np.float32)
  delta = BLEND_EPS * np.where(usable, sigma, 1.0)  # the probe's size, in the input's units
  crop = prep.crop[1:]
  corrupted, n4_img = prep.corrupted.copy(), prep.n4.copy()
  step = (delta / prep.scale[rows])[:, None, None] * probe
  for j, i in enumerate(rows):
    corrupted[i][crop] += step[j]
    n4_img[i][crop] += step[j] * np.exp(-prep.log_field[i][crop])
  out = network(batches, corrupted, n4_img, desc="blend probe")
  probed = np.maximum(out[(slice(None),) + crop], 0.0) * prep.scale[rows, None, None]
  if lowfreq:
    ref2 = (inputs[rows] + delta[:, None, None] * probe) / field[rows] * factors[rows, None, None]
    probed = _lowfreq_fix(probed, ref2, float(lowfreq))
  probed_net = probed.copy() if both else None  # the network's own output under the probe
  if wiener:
    for j, i in enumerate(rows):
      if usable[j]:
        probed[j] = _pilot_wiener(reference[i] + delta[j] * (factors[i] / field[i]) * probe[j], probed[j],
                                  noise_map(i))
  changes = {}  # slice → its change's bands, (bands, X, Y)
  quad, lin = np.zeros((len(rows), n_bands, n_bands)), np.zeros((len(rows), n_bands))
  for j, i in enumerate(rows):
    if not usable[j]:
      continue
    m = mask[i]
    gain = factors[i] / field[i]  # the reference's units per input unit
    changes[i] = _changes(restored[i], network_out[i] if both else None, reference[i])
    moved = _changes(probed[j], probed_net[j] if both else None, restored[i], network_out[i] if both else None,
                     delta[j] * gain * probe[j])[:, m]
    quad[j] = changes[i][:, m] @ changes[i][:, m].T
    lin[j] = (sigma[j] ** 2 * gain[m] * probe[j][m] * moved).sum(axis=1) / delta[j]
  if one_weight:
    alphas[:] = _box_qp(quad.sum(axis=0), lin.sum(axis=0))
  else:
    for j, i in enumerate(rows):
      if usable[j]:
        alphas[i] = _box_qp(quad[j], lin[j])
  weight = np.maximum(ndimage.gaussian_filter(tissue.astype(np.float32), (0, 2, 2)), tissue)  # 1 in tissue, 0 in air
  out = network_out.copy()
  for i in np.flatnonzero(np.isfinite(alphas[:, 0])):
    bands = changes[i] if i in changes else _changes(restored[i], network_out[i] if both else None, reference[i])
    if wiener:  # tissue: r + Σ αₖ cₖ of the filtered image; air: the network's own output
      kept = reference[i] + sum(a * band for a, band in zip(alphas[i], bands))
      out[i] = weight[i] * kept + (1.0 - weight[i]) * network_out[i]
    else:
      out[i] = reference[i] + sum((1.0 - (1.0 - a) * weight[i]) * band for a, band in zip(alphas[i], bands))
  return np.maximum(out, 0.0), alphas


def _changes(filtered: np.ndarray, net: np.ndarray | None, reference: np.ndarray, ref_net: np.ndarray | None = None,
             step=0.0) -> np.ndarray:
  """The changes the SURE blend weighs, split into bands (`_bands`), stacked: (filtered − reference
  − step) and, when `net` is given, (net − ref_net − step) (ref_net defaults to reference)."""
  out = _bands(filtered - reference - step, BLEND_BANDS)
  if net is None:
    return out
  return np.concatenate([out, _bands(net - (reference if ref_net is None else ref_net) - step, BLEND_BANDS)])


def _dct_matrix(n: int) -> np.ndarray:
  """(n, n) orthonormal DCT-II matrix (rows: frequencies)."""
  k = np.arange(n)
  d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
  d[0] /= np.sqrt(2.0)
  return d


def _pilot_wiener(reference: np.ndarray, pilot: np.ndarray, sigma: np.ndarray, *, block: int = WIENER_BLOCK,
                  stride: int = WIENER_STRIDE, passes: int = WIENER_PASSES) -> np.ndarray:
  """The empirical Wiener filter of a noisy 2-D image with a pilot estimate (the second step of
  BM3D, Dabov et al. 2007, with the network's output as the pilot and sliding blocks in place of
  grouped ones): in every `block`² DCT block (every `stride` pixels), each coefficient of
  `reference` is scaled by p² / (p² + σ²), p the pilot's coefficient and σ² the block's mean noise
  variance from `sigma` (an (X, Y) map of the reference's noise σ); the DC term is kept. Blocks are
  averaged with BM3D's weights 1 / Σ W². Where the pilot shows structure the reference's own
  pixels are kept (the pilot's blur and texture errors do not reach the output); where the pilot is
  flat the reference's noise is removed. σ = 0 returns `reference` (to float rounding). With
  `passes` > 1 the filter runs again with its own output as the pilot."""
  for _ in range(passes - 1):
    pilot = _pilot_wiener(reference, pilot, sigma, block=block, stride=stride, passes=1)
  from numpy.lib.stride_tricks import sliding_window_view

  b, st = block, stride
  x, y = reference.shape
  pad = ((b, b + (-(x - b) % st)), (b, b + (-(y - b) % st)))
  r = np.pad(reference.astype(np.float32), pad, mode="reflect")
  p = np.pad(pilot.astype(np.float32), pad, mode="reflect")
  v = np.pad(sigma.astype(np.float32) ** 2, pad, mode="reflect")
  d = _dct_matrix(b)
  basis = np.kron(d, d).T.astype(np.float32)  # (b², b²): a flattened block → its 2-D DCT coefficients
  blocks = lambda a: sliding_window_view(a, (b, b))[::st, ::st]  # noqa: E731
  n1, n2 = blocks(r).shape[:2]
  rc = blocks(r).reshape(n1 * n2, b * b) @ basis
  pc = blocks(p).reshape(n1 * n2, b * b) @ basis
  var = blocks(v).mean(axis=(2, 3)).reshape(-1, 1)
  w = np.where(var > 0, pc ** 2 / np.maximum(pc ** 2 + var, 1e-30), np.float32(1.0))
  w[:, 0] = 1.0  # the DC term
  weight = 1.0 / (w ** 2).sum(axis=1)
  filtered = ((w * rc) @ basis.T * weight[:, None]).reshape(n1, n2, b, b)
  weight = weight.reshape(n1, n2)
  out, acc = np.zeros_like(r), np.zeros_like(r)
  for i in range(b):
    for j in range(b):
      out[i:i + st * n1:st, j:j + st * n2:st] += filtered[:, :, i, j]
      acc[i:i + st * n1:st, j:j + st * n2:st] += weight
  out = out / np.maximum(acc, 1e-30)
  return out[b:b + x, b:b + y].astype(reference.dtype)


def _bands(x: np.ndarray, sigmas) -> np.ndarray:
  """(len(sigmas) + 1, X, Y): x split into Gaussian bands that sum to x, coarsest first:
  G_s1 x, G_s2 x − G_s1 x, …, x − G_sn x."""
  from scipy import ndimage

  smooth = [ndimage.gaussian_filter(x, s) for s in sigmas] + [x]
  return np.stack([smooth[0]] + [b - a for a, b in zip(smooth[:-1], smooth[1:])])


def _box_qp(quad: np.ndarray, lin: np.ndarray) -> np.ndarray:
  """argmin over α ∈ [0, 1]^K of αᵀ quad α + 2 linᵀ α (K small: every face of the box is tried)."""
  import itertools

  k = len(lin)
  best, best_val = np.ones(k), np.inf
  for state in itertools.product((0, 1, 2), repeat=k):  # 0 / 1: fixed there; 2: free
    a = np.array([float(s) if s < 2 else 0.0 for s in state])
    free = [i for i, s in enumerate(state) if s == 2]
    if free:
      fixed = [i for i in range(k) if i not in free]
      rhs = -(lin[free] + quad[np.ix_(free, fixed)] @ a[fixed])
      try:
        a[free] = np.linalg.solve(quad[np.ix_(free, free)], rhs)
      except np.linalg.LinAlgError:
        continue
      if np.any(a[free] < 0) or np.any(a[free] > 1):
        continue
    val = float(a @ quad @ a + 2 * lin @ a)
    if val < best_val:
      best, best_val = a, val
  return best


# N4 of a volume (`restore_array(n4_mode=...)`): "auto" runs one 3-D N4 on volumes with at least
# VOLUME_N4_MIN_SLICES restored slices (as SimpleITK users do), per-slice N4 otherwise.
N4_MODES = ("auto", "volume", "slices")
VOLUME_N4_MIN_SLICES = 8


def _use_volume_n4(mode: str, independent_slices: bool, n_slices: int) -> bool:
  if mode == "slices" or independent_slices:
    return False
  return mode == "volume" or n_slices >= VOLUME_N4_MIN_SLICES


def _slice_spacing(spacing, axis: int) -> tuple[float, ...]:
  """Voxel size in slicing order (the slicing axis first)."""
  sp = [float(x) for x in spacing]
  return (sp[axis], *[x for i, x in enumerate(sp) if i != axis])


def _volume_n4(slices: np.ndarray, mask: np.ndarray, backend: str, settings, spacing) -> np.ndarray:
  """The (N, X, Y) log field of one 3-D N4 of the stack (N4 shrinks the volume before fitting)."""
  from mri_jax import n4 as n4lib

  vol = np.asarray(slices, np.float32)
  scale = float(vol[mask].mean())  # N4 is scale-free; unit foreground mean keeps the numbers tame
  if backend == "sitk":
    res = n4lib.n4_sitk(vol / scale, mask, spacing=spacing, settings=settings)
  else:
    res = n4lib.n4(vol / scale, mask, spacing=spacing, settings=settings)
  return np.array(res.log_field, np.float32)  # a writable copy (the field network adds to it)


def check_options(*, steps=None, seed: int = 0, n4: str = "jax", batch_size: int = DEFAULT_BATCH_SIZE,
                  axis=None, fidelity=None, lowfreq=None, n4_mode: str = "auto", noise_clamp=None,
                  blend: bool = DEFAULT_BLEND, independent_slices: bool = False, wiener: bool = DEFAULT_WIENER,
                  field_net: float = DEFAULT_FIELD_NET, noise_floor: bool = DEFAULT_NOISE_FLOOR) -> None:
  """Raises UserInputError for options out of range (those that need no model)."""
  if independent_slices and n4_mode == "volume":
    raise UserInputError("independent slices (--independent-slices) get N4 per slice; they cannot be combined "
                         "with --n4-mode volume")
  if not isinstance(blend, (bool, np.bool_)):
    raise UserInputError(f"blend must be True or False, got {blend!r}")
  if not isinstance(wiener, (bool, np.bool_)):
    raise UserInputError(f"wiener must be True or False, got {wiener!r}")
  if not isinstance(noise_floor, (bool, np.bool_)):
    raise UserInputError(f"noise_floor must be True or False, got {noise_floor!r}")
  if isinstance(field_net, (bool, np.bool_)) or not isinstance(field_net, (int, float, np.integer, np.floating)) \
      or not 0.0 <= float(field_net) <= 1.0:
    raise UserInputError(f"field-network weight (--field-net) must be a number in [0, 1], got {field_net!r}")
  if noise_clamp is not None and not 0.0 <= float(noise_clamp) <= 100.0:
    raise UserInputError(f"noise clamp k (--noise-clamp) must be in [0, 100] noise σ, got {noise_clamp}")
  if n4_mode not in N4_MODES:
    raise UserInputError(f"N4 mode (--n4-mode) must be one of {N4_MODES}, got {n4_mode!r}")
  if lowfreq is not None and not 0.0 <= float(lowfreq) <= 64.0:
    raise UserInputError(f"low-frequency fix σ (--lowfreq) must be in [0, 64] pixels, got {lowfreq}")
  if fidelity is not None and not 0.0 <= float(fidelity) <= 1.0:
    raise UserInputError(f"fidelity weight (--fidelity) must be in [0, 1], got {fidelity}")
  if steps is not None and int(steps) < 1:
    raise UserInputError(f"steps (--steps) must be ≥ 1, got {steps}")
  if n4 not in N4_CHOICES:
    raise UserInputError(f"n4 (--n4) must be one of {N4_CHOICES}, got {n4!r}")
  if batch_size < 1:
    raise UserInputError(f"batch size (--batch-size) must be ≥ 1, got {batch_size}")
  if seed < 0:
    raise UserInputError(f"seed (--seed) must be a non-negative integer, got {seed}")
  if axis is not None and not 0 <= int(axis) <= 2:
    raise UserInputError(f"axis (--axis) must be 0, 1 or 2 for a 3-D image, got {axis}")


def check_model_options(model: Model, *, steps=None, n4: str = "jax") -> int:
  """The number of sampler steps K; raises UserInputError for options this model cannot take."""
  k = model.default_steps if steps is None else int(steps)
  if not 1 <= k <= model.max_steps:
    raise UserInputError(f"steps (--steps) must be in [1, {model.max_steps}] for this model, got {steps}")
  if n4 == "none" and model.conditioned_on_n4:
    raise UserInputError("this model was trained with N4 conditioning (model.condition_n4 in its config): "
                         "use --n4 jax or --n4 sitk; 'none' would give it inputs it never saw")
  return k


def check_image(data: np.ndarray, name: str = "input") -> None:
  """Raises UserInputError for images the restorer cannot take (shape, NaN/Inf, constant, too small)."""
  if data.ndim not in (2, 3):
    raise UserInputError(f"{name} must be 2-D or 3-D, got shape {data.shape}")
  if data.size == 0 or min(data.shape) < 1:
    raise UserInputError(f"{name} is empty (shape {data.shape})")
  if not np.all(np.isfinite(data)):
    raise UserInputError(f"{name} holds NaN or Inf values")
  nifti.check_content(data, name, "restore")


def nonzero_box(data: np.ndarray) -> tuple[slice, ...] | None:
  """The bounding box of `data`'s positive voxels grown by `FRAME_MARGIN` of its size on each side
  (and to at least 8 voxels, the smallest slice restore takes, so a too-small input is reported as
  such, not as a crop), as one slice per axis; None when it is the whole array (or there are no
  positive voxels). What lies outside is a frame of zeros (padding after resampling, skull
  stripping or a reformat), which `restore_array` leaves as it is. (A 3-D array with ≥ 2 voxels
  along its last axis keeps ≥ 2 there, so the crop is never read as an X×Y×1 2-D image.)"""
  positive = data > 0
  box = []
  for a in range(data.ndim):
    hit = np.flatnonzero(positive.any(axis=tuple(b for b in range(data.ndim) if b != a)))
    if not len(hit):
      return None
    grow = int(np.ceil(FRAME_MARGIN * (hit[-1] + 1 - hit[0])))
    start, stop = max(int(hit[0]) - grow, 0), min(int(hit[-1]) + 1 + grow, data.shape[a])
    size = max(stop - start, min(8, data.shape[a]))  # at least 8 voxels (the smallest slice restored)
    stop = min(start + size, data.shape[a])
    box.append(slice(stop - size, stop))
  return None if all(sl.stop - sl.start == n for sl, n in zip(box, data.shape)) else tuple(box)


def _uncrop(res: RestoreResult, box: tuple[slice, ...], shape: tuple[int, ...], ax: int | None) -> RestoreResult:
  """`res`, restored inside `box`, back in the full array of `shape`: zeros (and an empty mask)
  outside, the field continued by its edge values, the per-slice scores of slices outside NaN."""
  pads = [(sl.start, n - sl.stop) for sl, n in zip(box, shape)]
  image = np.zeros(shape, np.float32)
  image[box] = res.image
  mask = np.zeros(shape, bool)
  mask[box] = res.mask
  field = None if res.field is None else np.pad(res.field, pads, mode="edge")
  before, after = (0, 0) if ax is None else pads[ax]

  def per_slice(values, fill):
    values = np.asarray(values)
    return np.pad(values, [(before, after)] + [(0, 0)] * (values.ndim - 1), constant_values=fill)

  check = None
  if res.consistency is not None:
    check = dict(res.consistency, energy=per_slice(res.consistency["energy"], np.nan).tolist(),
                 structure=per_slice(res.consistency["structure"], np.nan).tolist(),
                 flagged=[int(i) + before for i in res.consistency["flagged"]])
    check["residual"] = np.pad(res.consistency["residual"], pads)
  blend = None if res.blend is None else per_slice(res.blend, np.nan).astype(np.float32)
  floor = None if res.noise_floor is None else per_slice(res.noise_floor, np.nan).astype(np.float32)
  return RestoreResult(image, None if field is None else field.astype(np.float32), mask, ax, res.seconds, check, blend,
                       floor)


def restore_array(data: np.ndarray, model: Model | None = None, *, steps: int | None = None, seed: int = 0,
                  n4: str = "jax", batch_size: int = DEFAULT_BATCH_SIZE, axis: int | None = None, spacing=None,
                  affine=None, fidelity: float | None = None, lowfreq: float | None = DEFAULT_LOWFREQ,
                  noise_clamp: float | None = DEFAULT_NOISE_CLAMP, check_consistency: bool = True,
                  independent_slices: bool = False, n4_mode: str = "auto", blend: bool = DEFAULT_BLEND,
                  wiener: bool = DEFAULT_WIENER, field_net: float = DEFAULT_FIELD_NET,
                  noise_floor: bool = DEFAULT_NOISE_FLOOR, progress: bool = False) -> RestoreResult:
  """Restores a 2-D or 3-D magnitude image (see the module docstring for the steps).

  Args:
    data: (X, Y) or (X, Y, Z) array (X×Y×1 is treated as 2-D).
    model: from `load_model` (default: the shipped weights).
    steps: sampler steps K, 1 … the schedule's T (default: the model's configured K).
    seed: sampler seed (the output depends on it only for stochastic/noise-started schedules).
    n4: 'jax', 'sitk' or 'none' — N4 backend of the conditioning ('none' only for models trained
      without N4 conditioning).
    batch_size: slices per network call.
    axis: slicing axis of a 3-D volume (default `auto_axis`).
    spacing, affine: voxel size and affine, used only to choose the axis.
    fidelity: weight w ∈ [0, 1] of the fidelity path (default: the model's; no effect on models
      without one).
    lowfreq: σ in pixels of the low-frequency fix (default `DEFAULT_LOWFREQ`; None or 0: off): the
      output's content coarser than that scale is replaced by the N4-corrected input's (rescaled to the output's foreground mean),
      so intensities and contrast follow the input and the network contributes the finer detail
      (StableSR's wavelet/colour fix, with N4 removing the field). Needs N4.
    noise_clamp: k (default `DEFAULT_NOISE_CLAMP`; None or 0: off): the output may differ from the
      N4-corrected input (on the output's scale) by at most k × the input's noise σ per voxel, so
      the network removes noise but cannot erase or invent anatomy beyond what noise explains.
      Needs N4.
    check_consistency: run the physics consistency check (`mri_jax.consistency`) on the slices
      that were restored.
    independent_slices: the slices of a 3-D array are unrelated images (a stack of test slices),
      so Otsu's threshold is computed per slice instead of once for the volume (and N4 runs per slice).
    n4_mode: N4 of a 3-D volume: 'volume' (one 3-D N4 of the whole volume, SimpleITK's usual
      way: faster, and the field is continuous across slices), 'slices' (per-slice 2-D N4, as the
      training records were made), or 'auto' (volume for ≥ VOLUME_N4_MIN_SLICES restored slices).
    blend: the SURE blend (`_sure_blend`, default on; needs N4): output = N4 image + α × (network
      − N4 image), one α ∈ [0, 1] per band of the change (coarser / finer than 1 px), chosen per
      slice (per volume with a 3-D N4) to minimise Stein's unbiased estimate of the squared error
      — computed from the input alone, so where the network would do worse than the input, α
      falls towards 0. Costs one more network pass (for a volume with a 3-D N4: on the batch of
      `batch_size` slices that holds the middle slice). Does nothing without N4.
    wiener: inside the blend, the network's output is first used as the pilot of an empirical
      Wiener filter of the N4 image (`_pilot_wiener`, BM3D's second step), and the blend weighs
      that filtered image's change instead of the network's: the filter keeps the input's own
      pixels where the pilot shows structure and removes noise where it is flat (default on; no
      effect without the blend).
    field_net: weight w ∈ [0, 1] of the field network (default `DEFAULT_FIELD_NET`; 0 = off;
      needs N4): after N4, the network (`mri_jax.models.fieldnet`) predicts the smooth log bias
      N4 left, and w × it is divided out as well. Every later step — the network's conditioning,
      the low-frequency fix, the blend, the clamp, the returned field — uses the refined field.
    noise_floor: remove the magnitude's noise floor last (`_remove_floor`, default on; needs N4): the
      denoised output estimates the expected magnitude, which the coils' root sum of squares raises
      above the noise-free image by a floor (1.25σ in the air for one coil, 8σ for 32); each slice's
      coil count and σ are read from its air (else one coil and the input's σ), and the output is
      mapped back through the inverse of the non-central χ mean. The consistency check scores the
      output before this step (the input's expected magnitude).
    progress: show a progress bar on stderr.
  """
  from tqdm.auto import tqdm

  from mri_jax.n4 import otsu_mask

  check_options(steps=steps, seed=seed, n4=n4, batch_size=batch_size, axis=axis, fidelity=fidelity, lowfreq=lowfreq,
                n4_mode=n4_mode, noise_clamp=noise_clamp, blend=blend, independent_slices=independent_slices,
                wiener=wiener, field_net=field_net, noise_floor=noise_floor)
  data = np.asarray(data, np.float32)
  squeeze = data.ndim == 3 and data.shape[-1] == 1
  vol = data[..., 0] if squeeze else data
  check_image(vol)
  model = load_model() if model is None else model
  k = check_model_options(model, steps=steps, n4=n4)
  box = nonzero_box(data)
  if box is not None:  # a frame of exact zeros: restore the image inside it, the same as without the frame
    ax = None if vol.ndim == 2 else auto_axis(vol.shape, spacing, affine) if axis is None else int(axis)
    inner = restore_array(data[box], model, steps=steps, seed=seed, n4=n4, batch_size=batch_size, axis=ax,
                          fidelity=fidelity, lowfreq=lowfreq, noise_clamp=noise_clamp,
                          check_consistency=check_consistency, independent_slices=independent_slices, n4_mode=n4_mode,
                          blend=blend, wiener=wiener, field_net=field_net, noise_floor=noise_floor,
                          progress=progress)
    return _uncrop(inner, box, data.shape, ax)
  times = {}
  t0 = time.perf_counter()
  if vol.ndim == 3:
    ax = auto_axis(vol.shape, spacing, affine) if axis is None else int(axis)
    slices = np.moveaxis(vol, ax, 0)
  else:
    ax, slices = None, vol[None]
  slices = np.maximum(slices, 0.0)  # magnitude images: negative values (rare, from resampling) → 0
  if independent_slices:
    mask = np.stack([np.asarray(otsu_mask(x)) for x in slices])
  else:
    mask = np.asarray(otsu_mask(slices if vol.ndim == 3 else slices[0])).reshape(slices.shape)
  if not mask.any():
    raise UserInputError("no foreground found (Otsu's mask is empty)")
  counts = mask.reshape(len(slices), -1).sum(axis=1)
  # Slices with (almost) no anatomy — the caps of a volume — were never in training: pass them
  # through, and never send them through N4 or the network.
  anatomy = anatomy_slices(counts, independent_slices)
  idx = np.flatnonzero(anatomy)
  if not len(idx):
    raise UserInputError(f"too little foreground to restore: {int(counts.max())} voxels above Otsu's threshold in "
                         f"the fullest slice, at least {MIN_FOREGROUND} needed")
  volume_n4 = n4 != "none" and vol.ndim == 3 and _use_volume_n4(n4_mode, independent_slices, len(idx))
  settings = restore_n4_settings(model)
  log_field = None
  if volume_n4:
    log_field = _volume_n4(slices, mask, n4, settings,
                           None if spacing is None or ax is None else _slice_spacing(spacing, ax))
    if field_net:
      log_field += _volume_field_correction(slices, log_field, mask, idx, field_net)
  shape = R.bucket_shape(slices.shape[1:], model.factor)
  prep = R.prepare_slices(slices[idx], mask[idx], model.factor, n4_backend=n4, n4_settings=settings,
                          per_slice=independent_slices, batch_size=batch_size, shape=shape,
                          log_field=None if log_field is None else log_field[idx])
  if field_net and n4 != "none" and log_field is None:  # each slice's own N4 field, refined
    c = prep.crop
    res = _field_residual(prep.n4[c], prep.log_field[c], mask[idx], field_net)
    pads = [(0, 0)] + [(sl.start, full - sl.stop) for sl, full in zip(c[1:], prep.log_field.shape[1:])]
    prep = R.with_log_field(prep, prep.log_field + np.pad(res, pads, mode="edge"))
  times["n4"] = time.perf_counter() - t0
  t1 = time.perf_counter()
  run = _make_fn(model, k, None if fidelity is None else float(fidelity))
  key = jax.random.key(seed)
  n = len(prep.corrupted)
  bs = R.padded_batch(n, batch_size)

  def network(batches, corrupted, n4_img, desc="restoring"):
    """The network's output (rows of `batches`, in order) for the prepared slices with these pixel
    inputs. Batch i always holds the same slices and uses key i, so a slice's output does not
    depend on which other batches run."""
    outs = []
    for i in tqdm(batches, desc=desc, unit="batch", disable=not progress or len(batches) < 2, file=sys.stderr,
                  leave=False):
      sel = np.arange(i * bs, min(i * bs + bs, n))
      pad_sel = np.concatenate([sel, np.repeat(sel[-1:], bs - len(sel))])  # one shape → one compile
      res = run(model.params, jnp.asarray(corrupted[pad_sel]), jnp.asarray(n4_img[pad_sel]),
                jnp.asarray(prep.log_field[pad_sel]), jax.random.fold_in(key, i))
      outs.append(np.asarray(res)[:len(sel)])
    return np.concatenate(outs)

  out = network(range(-(-n // bs)), prep.corrupted, prep.n4)
  times["network"] = time.perf_counter() - t1
  restored = slices.copy()
  blend_weights = np.full((len(slices), blend_weight_count(wiener)), np.nan, np.float32)
  noise_floors = np.full((len(slices), 3), np.nan, np.float32)  # (L, σ, read from the air) per slice
  expected = None  # the output before the floor's removal: the input's expected magnitude ÷ field
  part = np.maximum(out[prep.crop], 0.0) * prep.scale[:, None, None]
  if n4 != "none" and (lowfreq or noise_clamp or blend or noise_floor):
    # the N4 field of these slices: the volume's 3-D field, or each slice's own
    fld = np.exp(log_field[idx] if log_field is not None else prep.log_field[prep.crop])
    # the N4 image on the output's scale: per slice, or one scale for a volume's 3-D N4 image
    ref, factors = _scaled_reference(part, slices[idx] / fld, mask[idx], one_scale=log_field is not None)
    if lowfreq:
      part = _lowfreq_fix(part, ref, float(lowfreq))
    # each slice's noise σ and floor (L, σ from the air), once for the tissue, blend, clamp and floor
    sigma = _input_sigmas(slices[idx], mask[idx])
    pooled = vol.ndim == 3 and not independent_slices
    floors = _read_floors(slices[idx], mask[idx], sigma, pooled=pooled)
    tissue = _tissue(prep.foreground[prep.crop], slices[idx], floors)
    if blend:
      t2 = time.perf_counter()
      part, alphas = _sure_blend(part, ref, factors, slices[idx], fld, mask[idx], tissue, prep, network, bs,
                                 lowfreq=lowfreq, one_weight=log_field is not None, seed=seed, sigma=sigma,
                                 wiener=wiener)
      blend_weights[idx] = alphas
      times["blend"] = time.perf_counter() - t2
    if noise_clamp:
      part = _noise_clamp(part, ref, factors, slices[idx], fld, mask[idx], float(noise_clamp), tissue, sigma=sigma)
    if noise_floor:
      expected = restored.copy()
      expected[idx] = part
      part = _remove_floor(part, factors, fld, floors, pooled=pooled)
      noise_floors[idx] = floors
  restored[idx] = part
  if log_field is not None and n < len(slices):
    # Slices passed through (the caps) still get the volume's N4 correction, on the restored
    # slices' scale, so the bias field does not jump where restoring stops.
    n4_vol = slices * np.exp(-log_field)
    m = mask[idx]
    c = float(restored[idx][m].sum()) / max(float(n4_vol[idx][m].sum()), 1e-12)
    rest = np.flatnonzero(~anatomy)
    restored[rest] = n4_vol[rest] * c
    if expected is not None:
      expected[rest] = restored[rest]
      restored[rest] = _caps_without_floor(slices[rest], mask[rest], np.exp(log_field[rest]), c,
                                           noise_floors[idx[0]])
  if not np.all(np.isfinite(restored)):  # never write a silently wrong image
    raise RuntimeError("the restorer produced non-finite values; please report this input")
  field = None
  if log_field is not None:  # the volume's 3-D N4 field
    field = np.exp(log_field)
  elif n4 != "none":  # each restored slice's N4 field (1 on pass-through slices)
    field = np.ones_like(slices)
    field[idx] = np.exp(prep.log_field[prep.crop])
  check = None
  if check_consistency:
    # the input is explained by its expected magnitude (the output before the floor's removal) × field + noise
    check = consistency.consistency(np.where(anatomy[:, None, None], slices, 0.0),
                                    restored if expected is None else expected, mask & anatomy[:, None, None],
                                    fields=field)

  def to_input_layout(a):
    """(N, X, Y) slices back to the input's layout (slicing axis, 2-D, X×Y×1); None stays None."""
    if a is None:
      return None
    a = np.moveaxis(a, 0, ax) if vol.ndim == 3 else a[0]
    return a[..., None] if squeeze else a

  restored, mask_o, field = to_input_layout(restored), to_input_layout(mask), to_input_layout(field)
  if check is not None:
    check["residual"] = to_input_layout(check["residual"])
  times["total"] = time.perf_counter() - t0
  return RestoreResult(restored.astype(np.float32), None if field is None else field.astype(np.float32),
                       mask_o, ax, times, check, blend_weights if blend and n4 != "none" else None,
                       noise_floors if noise_floor and n4 != "none" else None)


def load_input(path, *, series: str | None = None) -> nifti.NiftiImage:
  """An input image: a NIfTI file, a DICOM file, or a folder holding a DICOM series (`series`:
  its UID when the folder holds several). DICOM comes with its RAS affine (`mri_jax.io.dicom`)."""
  from mri_jax.io import dicom

  path = Path(path)
  if path.is_dir():
    return dicom.read_series(path, series)
  if series is not None:
    raise UserInputError(f"--series picks a series in a DICOM folder; '{path}' is not a folder")
  if dicom.is_dicom_file(path):
    return dicom.read_file(path)
  return nifti.load_nifti(path)


def restore_nifti(input_path, output_path, *, checkpoint=None, model: Model | None = None, series: str | None = None,
                  steps=None, seed: int = 0, n4: str = "jax", n4_mode: str = "auto",
                  batch_size: int = DEFAULT_BATCH_SIZE, axis: int | None = None, fidelity: float | None = None,
                  lowfreq: float | None = DEFAULT_LOWFREQ, noise_clamp: float | None = DEFAULT_NOISE_CLAMP,
                  blend: bool = DEFAULT_BLEND, wiener: bool = DEFAULT_WIENER, field_net: float = DEFAULT_FIELD_NET,
                  noise_floor: bool = DEFAULT_NOISE_FLOOR, independent_slices: bool = False, save_field=None,
                  save_residual=None, save_uncertainty=None, uncertainty_seeds: int = 4, overwrite: bool = False,
                  progress: bool = False) -> dict:
  """Restores a 2-D/3-D NIfTI (or a DICOM file, or a folder holding a DICOM series: `load_input`)
  into the NIfTI `output_path` (header, affine and voxel size kept; atomic write).

  `model`: an already loaded model (else `checkpoint` is loaded). `save_field` receives the
  multiplicative N4 field the restorer was conditioned on, so input ≈ field × N4-corrected image;
  `save_residual` the consistency check's residual map (input − field × restored) / σ̂;
  `save_uncertainty` the per-voxel std of the restored image over `uncertainty_seeds` sampling
  seeds (seed, seed + 1, …). `independent_slices`: the 3-D input is a stack of unrelated 2-D images
  (`restore_array`). Options, paths and the image are checked before the model is loaded.

  Raises:
    UserInputError: bad input, options or checkpoint; output path problems. Nothing is written then.
  """
  check_options(steps=steps, seed=seed, n4=n4, batch_size=batch_size, axis=axis, fidelity=fidelity, lowfreq=lowfreq,
                n4_mode=n4_mode, noise_clamp=noise_clamp, blend=blend, independent_slices=independent_slices,
                wiener=wiener, field_net=field_net, noise_floor=noise_floor)
  if save_field is not None and n4 == "none":
    raise UserInputError("--save-field needs an N4 field: use --n4 jax or --n4 sitk")
  out, field_out = nifti.check_outputs(output_path, save_field, input_path, overwrite=overwrite)
  if save_uncertainty is not None and uncertainty_seeds < 2:
    raise UserInputError(f"--uncertainty-seeds must be ≥ 2, got {uncertainty_seeds}")
  extra = {}
  for flag, path in (("--save-residual", save_residual), ("--save-uncertainty", save_uncertainty)):
    if path is not None:
      extra[flag] = nifti.check_output_path(path, input_path, overwrite=overwrite)
  taken = [p.resolve() for p in (out, field_out, *extra.values()) if p is not None]
  if len(set(taken)) < len(taken):
    raise UserInputError("OUTPUT, --save-field, --save-residual and --save-uncertainty must be different files")
  img = load_input(input_path, series=series)
  check_image(img.data[..., 0] if img.data.ndim == 3 and img.data.shape[-1] == 1 else img.data)
  model = load_model(checkpoint) if model is None else model
  res = restore_array(img.data, model, steps=steps, seed=seed, n4=n4, batch_size=batch_size, axis=axis,
                      spacing=img.spacing, affine=img.image.affine, fidelity=fidelity, lowfreq=lowfreq,
                      noise_clamp=noise_clamp, blend=blend, wiener=wiener, field_net=field_net, n4_mode=n4_mode,
                      noise_floor=noise_floor, independent_slices=independent_slices, progress=progress)
  uncertainty = None
  if save_uncertainty is not None:
    runs = [res.image] + [restore_array(img.data, model, steps=steps, seed=seed + i, n4=n4, batch_size=batch_size,
                                        axis=axis, spacing=img.spacing, affine=img.image.affine, fidelity=fidelity,
                                        lowfreq=lowfreq, noise_clamp=noise_clamp, blend=blend, wiener=wiener,
                                        field_net=field_net, n4_mode=n4_mode, noise_floor=noise_floor,
                                        independent_slices=independent_slices, check_consistency=False).image
                            for i in range(1, uncertainty_seeds)]
    uncertainty = np.std(np.stack(runs), axis=0).astype(np.float32)
  nifti.save_nifti_like(out, res.image, img, description="mri-jax restore")
  if field_out is not None:
    nifti.save_nifti_like(field_out, res.field, img, description="mri-jax restore n4 field")
  if "--save-residual" in extra:
    nifti.save_nifti_like(extra["--save-residual"], res.consistency["residual"], img,
                          description="mri-jax restore residual / sigma")
  if uncertainty is not None:
    nifti.save_nifti_like(extra["--save-uncertainty"], uncertainty, img, description="mri-jax restore seed std")
  k = model.default_steps if steps is None else int(steps)
  check = res.consistency
  energy = [e for e in check["energy"] if np.isfinite(e)] or [np.nan]  # NaN: slice not scored
  structure = [e for e in check["structure"] if np.isfinite(e)] or [np.nan]
  weights = None if res.blend is None else res.blend[np.isfinite(res.blend).all(axis=1)]
  floors = None if res.noise_floor is None else res.noise_floor[np.isfinite(res.noise_floor).all(axis=1)]
  return dict(shape=list(img.data.shape), axis=res.axis, steps=k, n4=n4,
              field_net=float(field_net) if n4 != "none" else 0.0, model=model.source,
              seconds=res.seconds, foreground_voxels=int(res.mask.sum()),
              blend=None if weights is None or not len(weights) else
              dict(median=np.median(weights, axis=0).tolist(), min=weights.min(axis=0).tolist(),
                   max=weights.max(axis=0).tolist(), bands=list(BLEND_BANDS), wiener=bool(wiener),
                   network_too=bool(wiener and BLEND_NETWORK_TOO)),
              noise_floor=None if floors is None or not len(floors) else
              dict(coils=float(np.median(floors[:, 0])), slices_from_air=int(floors[:, 2].sum()),
                   slices=int(len(floors))),
              consistency=dict(energy=float(np.median(energy)), structure=float(np.median(structure)),
                               max_structure=float(np.max(structure)), flagged=list(check["flagged"]),
                               warn_structure=check["warn_structure"]))
