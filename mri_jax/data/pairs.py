"""Synthetic (clean, corrupted, true field, N4) examples: what the `mri_pairs` TFDS builder writes.

Kept here, outside TFDS, so the generation is a plain, testable library function:
`generate(config, split, manual_dir)` yields `(key, example)` pairs.

Sources of clean anatomy:
- "mixed" (`PairsConfig.anatomy = 'mixed'`, no download): random label scenes, heads built on the
  MNI152 maps and body-like scenes, with random per-label contrast, framing, resolution and field
  of view (`mri_jax.data.labels`, `mri_jax.data.mixed`); example j of subject k of a split comes
  from the key (seed, split, k, j). `contrast` holds '<scene>-<weighting>', e.g. 'head-t1';
- "synthetic" (default, no download): subjects made by `mri_jax.data.synth` from the MNI152 tissue
  maps shipped in nilearn, subject k of a split seeded by (config seed, split, k);
- "nifti": every `*.nii` / `*.nii.gz` under `manual_dir`, reoriented to RAS (closest canonical),
  resampled to isotropic voxels, intensities divided by the 99.5th percentile of the foreground.
  The subject id is the file name without a trailing contrast tag (IXI002-Guys-0828-T1 →
  IXI002-Guys-0828, contrast T1); subjects go to train / validation / test by a hash of the id,
  so every scan of a subject lands in the same split.

Corruption: the coil-physics simulator with `physics.sampling.training_ranges(config.corruption)`
ranges (the default, or 'wide'), the coil count drawn per example from `config.coils` ('mixed':
per subject, with the coil model from the ranges' `coil_models`); σ is a fraction of the mean clean
foreground intensity ('wide': of the image maximum). N4 (JAX or SimpleITK backend, or none) runs
on each corrupted slice/volume with an Otsu mask. Everything is deterministic given the config
(same machine, same versions).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mri_jax import n4, physics
from mri_jax.data import anatomy, labels, mixed, synth

SPLITS = ("train", "validation", "test")
_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
_CONTRAST_TAG = re.compile(r"[-_](T1w?|T2w?|PDw?|FLAIR|T1CE|T1GD|MRA|DTI)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class PairsConfig:
  """What one dataset config generates.

  Attributes:
    dims: 2 (axial slices) or 3 (cubic patches).
    size: slice side or patch side, voxels.
    voxel_mm: isotropic voxel size the anatomy is resampled to (the template is 1 mm).
    slices_per_subject: axial slices per subject (2-D) / patches per subject (3-D).
    subjects: synthetic subjects per split (train, validation, test).
    coils: coil counts drawn uniformly per example (1 ⇒ Rician).
    n4_backend: 'jax', 'sitk' or 'none' (N4 fields then zero).
    n4_iterations: N4 iterations per level.
    seed: base seed.
    anatomy: 'mni152' (synthetic subjects from the template, or NIfTI files) or 'mixed' (label
      scenes with random contrast and geometry; 2-D only).
    corruption: `training_ranges` variant ('' = the default ranges, 'wide', 'single_coil').
    canvas: 'mixed' only: side of the square canvas scenes are drawn on (pixels of voxel_mm).
    detail: 'mixed' only: finer images per pixel (`mix_settings`): less magnification, fewer
      low-resolution acquisitions, pixel-scale texture and thin lines.
  """

  dims: int = 2
  size: int = 128
  voxel_mm: int = 2
  slices_per_subject: int = 16
  subjects: tuple[int, int, int] = (200, 20, 20)
  coils: tuple[int, ...] = (1, 4, 8, 16, 32)
  n4_backend: str = "jax"
  n4_iterations: tuple[int, ...] = (50, 50, 50, 50)
  seed: int = 0
  anatomy: str = "mni152"
  corruption: str = ""
  canvas: int = 128
  detail: bool = False

  def __post_init__(self):
    if self.dims not in (2, 3):
      raise ValueError(f"dims must be 2 or 3, got {self.dims}")
    if self.n4_backend not in (*n4.BACKENDS, "none"):
      raise ValueError(f"n4_backend must be jax, sitk or none, got {self.n4_backend!r}")
    if self.size < 16 or self.voxel_mm < 1 or self.slices_per_subject < 1:
      raise ValueError("size ≥ 16, voxel_mm ≥ 1 and slices_per_subject ≥ 1 are required")
    if self.anatomy not in ("mni152", "mixed") or (self.anatomy == "mixed" and self.dims != 2):
      raise ValueError(f"anatomy must be 'mni152' or 'mixed' (2-D), got {self.anatomy!r}, dims {self.dims}")
    if self.detail and self.anatomy != "mixed":
      raise ValueError("detail (finer images per pixel) applies to the 'mixed' anatomy only")

  @property
  def shape(self) -> tuple[int, ...]:
    return (self.size,) * self.dims


# --------------------------------------------------------------------------------------------
# Clean anatomy
# --------------------------------------------------------------------------------------------
def _block_mean(vol: np.ndarray, f: int) -> np.ndarray:
  if f == 1:
    return vol
  shape = [-(-n // f) * f for n in vol.shape]
  pad = np.zeros(shape, vol.dtype)
  pad[tuple(slice(0, n) for n in vol.shape)] = vol
  split = [x for n in shape for x in (n // f, f)]
  return pad.reshape(split).mean(axis=tuple(range(1, 2 * vol.ndim, 2)))


@functools.lru_cache(maxsize=4)
def template_tissues(voxel_mm: int) -> np.ndarray:
  """(3, X, Y, Z) CSF/GM/WM maps of MNI152 at `voxel_mm` mm (block averages of the 1 mm maps)."""
  a = anatomy.load_mni152()
  return np.stack([_block_mean(m, voxel_mm) for m in (a.csf, a.gm, a.wm)]).astype(np.float32)


def subject_key(config: PairsConfig, split: str, index: int) -> jax.Array:
  """The key of synthetic subject `index` of `split`: one branch per split, so splits never share one."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), SPLITS.index(split)), index)


def synthetic_subject(config: PairsConfig, split: str, index: int):
  """(clean volume, brain mask, contrast name, subject id) of synthetic subject `index` of `split`."""
  key = subject_key(config, split, index)
  s = synth.synthesize(key, template_tissues(config.voxel_mm))
  sid = f"synth-s{config.seed}-{split}-{index:05d}"
  return np.asarray(s.image), np.asarray(s.mask), synth.SEQUENCES[int(s.sequence)], sid


def subject_id_and_contrast(path: Path) -> tuple[str, str]:
  """Subject id and contrast tag from a NIfTI file name (tag 'unknown' when none)."""
  stem = path.name[:-7] if path.name.endswith(".nii.gz") else path.stem
  m = _CONTRAST_TAG.search(stem)
  return (stem[:m.start()], m.group(1).upper()) if m else (stem, "unknown")


def split_of(subject: str) -> str:
  """Deterministic subject-level split (80/10/10 by a hash of the id)."""
  h = int(hashlib.sha256(subject.encode()).hexdigest()[:8], 16) / 16 ** 8
  if h < _SPLIT_FRACTIONS[0]:
    return "train"
  return "validation" if h < _SPLIT_FRACTIONS[0] + _SPLIT_FRACTIONS[1] else "test"


def nifti_subject(path: Path, voxel_mm: float):
  """(clean volume, foreground mask) of a NIfTI file: RAS, isotropic voxels, robust scaling."""
  import nibabel as nib
  from scipy import ndimage

  img = nib.as_closest_canonical(nib.load(str(path)))
  data = np.asarray(img.get_fdata(dtype=np.float32))
  while data.ndim > 3 and data.shape[-1] == 1:
    data = data[..., 0]
  if data.ndim != 3 or not np.all(np.isfinite(data)):
    raise ValueError(f"'{path}' is not a finite 3-D image (shape {data.shape})")
  zooms = np.asarray(img.header.get_zooms()[:3], np.float64)
  data = ndimage.zoom(np.maximum(data, 0.0), zooms / voxel_mm, order=1)
  mask = np.asarray(n4.otsu_mask(data))
  scale = np.percentile(data[mask], 99.5) if mask.any() else max(float(data.max()), 1e-6)
  return (data / max(scale, 1e-6)).astype(np.float32), mask


# --------------------------------------------------------------------------------------------
# Slices and patches
# --------------------------------------------------------------------------------------------
def _fit(a: np.ndarray, size: int) -> np.ndarray:
  """Centre-crops / zero-pads every axis of `a` to `size`."""
  out = a
  for ax, n in enumerate(a.shape):
    if n > size:
      start = (n - size) // 2
      out = np.take(out, np.arange(start, start + size), axis=ax)
    elif n < size:
      before = (size - n) // 2
      pads = [(0, 0)] * out.ndim
      pads[ax] = (before, size - n - before)
      out = np.pad(out, pads)
  return out


def slice_indices(mask: np.ndarray, n: int) -> np.ndarray:
  """n axial (last-axis) slice indices spread over slices with ≥ 30% of the largest brain area."""
  area = mask.reshape(-1, mask.shape[-1]).sum(axis=0)
  good = np.flatnonzero(area >= 0.3 * area.max())
  return good[np.linspace(0, len(good) - 1, n).round().astype(int)]


def patch_corners(mask: np.ndarray, size: int, n: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
  """n corners of size³ patches whose centres lie in the mask's bounding box."""
  lo = np.min(np.argwhere(mask), axis=0)
  hi = np.max(np.argwhere(mask), axis=0)
  corners = []
  for _ in range(n):
    centre = [rng.integers(l, h + 1) for l, h in zip(lo, hi)]
    corners.append(tuple(int(np.clip(c - size // 2, 0, max(s - size, 0))) for c, s in zip(centre, mask.shape)))
  return corners


# --------------------------------------------------------------------------------------------
# Corruption and N4
# --------------------------------------------------------------------------------------------
def simulate_batch(keys, cleans, masks, n_coils: int, ranges=None, coil_model: str | None = None):
  """Corrupts (B, ...) clean images, one key each, with the training ranges and `n_coils` coils.

  Pure and traceable; σ is relative to each image's mean inside its mask (or to its maximum when
  the ranges say `noise_reference = 'max'`); ranges with `gfactor` / `p_gfactor` scale σ by a
  g-factor map on that share of examples. `coil_model` overrides the ranges' coil model (static).
  Returns (images, true fields, σ). Used by the dataset builder and by `pipeline.corrupt_on_device`.
  """
  cfg = physics.sampling.training_ranges() if ranges is None else ranges.copy_and_resolve_references()
  cfg.n_coils = int(n_coils)
  if coil_model is not None:
    cfg.coil_model = coil_model
  if n_coils == 1:
    cfg.noise_correlation = (0.0, 0.0)
  by_max = cfg.get("noise_reference", "mask") == "max"
  gfactor = cfg.get("gfactor", None)

  def one(key, clean, mask):
    kp, kn = jax.random.split(key)
    noise_map = None
    if gfactor is not None:
      k_amp, k_on, k_map = jax.random.split(jax.random.fold_in(key, 7), 3)
      amp = jax.random.uniform(k_amp, (), minval=gfactor[0], maxval=gfactor[1])
      amp = jnp.where(jax.random.bernoulli(k_on, float(cfg.get("p_gfactor", 1.0))), amp, 0.0)
      noise_map = physics.noise.gfactor_map(k_map, clean.shape, amp)
    out = physics.simulate(kn, clean, physics.sample_params(kp, cfg),
                           reference_mask=None if by_max else mask, noise_map=noise_map)
    return out.image, out.bias, out.noise_sigma

  return jax.vmap(one)(keys, cleans, jnp.asarray(masks).astype(bool))


_corrupt_batch = jax.jit(simulate_batch, static_argnames=("n_coils", "ranges", "coil_model"))


def corrupt(cleans: np.ndarray, masks: np.ndarray, coils: np.ndarray, key: jax.Array, ranges=None,
            models: np.ndarray | None = None):
  """Corrupts a batch (B, *shape) with per-example coil counts (and coil models, indices into
  `ranges.coil_models`); one compiled simulator per (count, model) group. Returns images, fields, σ.
  """
  images = np.zeros_like(cleans)
  fields = np.ones_like(cleans)
  sigmas = np.zeros(len(cleans), np.float32)
  keys = jax.random.split(key, len(cleans))
  models = np.zeros(len(cleans), np.int64) if models is None else np.asarray(models)
  names = tuple(ranges.get("coil_models", (None,))) if ranges is not None else (None,)
  frozen = None if ranges is None else _FrozenRanges(ranges)
  for c, m in sorted({(int(c), int(m)) for c, m in zip(coils, models)}):
    idx = np.flatnonzero((coils == c) & (models == m))
    im, bf, sg = _corrupt_batch(keys[idx], jnp.asarray(cleans[idx]), jnp.asarray(masks[idx]), c,
                                frozen, names[m])
    images[idx], fields[idx], sigmas[idx] = np.asarray(im), np.asarray(bf), np.asarray(sg)
  return images, fields, sigmas


class _FrozenRanges:
  """A hashable, read-only view of a ranges ConfigDict (a static argument of the jitted simulator)."""

  def __init__(self, ranges):
    self._cfg = ranges
    self._key = repr(sorted(ranges.to_dict().items()))

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, _FrozenRanges) and other._key == self._key

  def copy_and_resolve_references(self):
    return self._cfg.copy_and_resolve_references()


def run_n4(images: np.ndarray, backend: str, iterations: tuple[int, ...]):
  """N4-corrected images and log fields for a batch (Otsu masks); zeros/copies for 'none'."""
  if backend == "none":
    return images.copy(), np.zeros_like(images)
  settings = n4.N4Settings(iterations=tuple(iterations))
  if backend == "jax":
    res = n4.n4_batch(images, settings=settings)
    return np.asarray(res.corrected), np.asarray(res.log_field)
  out = [n4.n4_sitk(x, settings=settings) for x in images]
  return np.stack([o.corrected for o in out]), np.stack([o.log_field for o in out])


# --------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------
def _subjects(config: PairsConfig, split: str, manual_dir):
  if manual_dir is None:
    for i in range(config.subjects[SPLITS.index(split)]):
      yield lambda i=i: synthetic_subject(config, split, i)
    return
  files = sorted([p for p in Path(manual_dir).rglob("*") if p.name.endswith((".nii", ".nii.gz"))])
  if not files:
    raise ValueError(f"no .nii / .nii.gz files under manual_dir '{manual_dir}'")
  for path in files:
    sid, contrast = subject_id_and_contrast(path)
    if split_of(sid) == split:
      def load(path=path, sid=sid, contrast=contrast):
        vol, mask = nifti_subject(path, config.voxel_mm)
        return vol, mask, contrast, sid
      yield load


def mix_settings(config: PairsConfig) -> mixed.MixSettings:
  """The `mixed.MixSettings` of a 'mixed' config (shells up to ≈ 48 mm deep); with `detail`, the
  framing magnifies less (zoom 0.5–1.6×, tight crops 1.5–2.5×), a third of the images (not half)
  are low-resolution acquisitions, and 70% get pixel-scale detail (`mixed.pixel_detail`)."""
  label_settings = labels.LabelSettings(canvas=config.canvas, voxel_mm=float(config.voxel_mm),
                                        distance_steps=int(np.ceil(48 / config.voxel_mm)))
  fine = dict(zoom=(0.5, 1.6), tight_zoom=(1.5, 2.5), p_lowres=0.35, p_detail=0.7) if config.detail else {}
  return mixed.MixSettings(size=config.size, min_side=min(48, config.size), labels=label_settings, **fine)


@functools.lru_cache(maxsize=4)
def _template_slices(voxel_mm: int, canvas: int) -> np.ndarray:
  return labels.template_slices(template_tissues(voxel_mm), canvas)


def mixed_subject(config: PairsConfig, split: str, index: int) -> mixed.Example:
  """The clean `mixed.Example`s (batched, one per slice) of 'mixed' subject `index` of `split`."""
  keys = jax.random.split(jax.random.fold_in(subject_key(config, split, index), 0), config.slices_per_subject)
  return mixed.examples(keys, jnp.asarray(_template_slices(config.voxel_mm, config.canvas)),
                        mix_settings(config))


def _records(sid, contrasts, positions, cleans, masks, coils, corrupted, config):
  """N4 on the corrupted images, then the record dicts of one subject (see the module docstring)."""
  images, fields, sigmas = corrupted
  n4_img, n4_log = run_n4(images, config.n4_backend, config.n4_iterations)
  for k in range(len(cleans)):
    m = masks[k]
    log_bias = np.log(fields[k][m]) if m.any() else np.zeros(1)
    yield f"{sid}_{k:03d}", {
        "clean": cleans[k].astype(np.float32), "corrupted": images[k].astype(np.float32),
        "bias": fields[k].astype(np.float32), "n4_corrected": n4_img[k].astype(np.float32),
        "n4_log_field": n4_log[k].astype(np.float32), "mask": m.astype(np.uint8),
        "subject": sid, "slice_index": positions[k], "contrast": contrasts[k],
        "n_coils": int(coils[k]), "noise_sigma": float(sigmas[k]),
        "bias_log_std": float(np.std(log_bias)),
    }


def _subject_rng(config: PairsConfig, sid: str) -> np.random.Generator:
  return np.random.default_rng(int(hashlib.sha256(f"{config.seed}/{sid}".encode()).hexdigest()[:8], 16))


def _generate_mixed(config: PairsConfig, split: str) -> Iterator[tuple[str, dict]]:
  ranges = physics.sampling.training_ranges(config.corruption or None)
  n_models = len(ranges.get("coil_models", ("biot_savart",)))
  n = config.slices_per_subject
  for i in range(config.subjects[SPLITS.index(split)]):
    sid = f"mixed-s{config.seed}-{split}-{i:05d}"
    ex = mixed_subject(config, split, i)
    # One coil (count and model) per subject, as in one scan session; it also keeps one compiled
    # simulator per (count, model) for the whole build.
    rng = _subject_rng(config, sid)
    coils = np.full(n, rng.choice(np.asarray(config.coils)))
    models = np.full(n, rng.integers(n_models))
    cleans, masks = np.asarray(ex.clean), np.asarray(ex.mask)
    key = jax.random.fold_in(subject_key(config, split, i), 1)
    images, fields, sigmas = corrupt(cleans, masks, coils, key, ranges, models)
    images = np.asarray(mixed.finish(jnp.asarray(images), ex))
    contrasts = [f"{labels.SCENES[int(a)]}-{mixed.WEIGHTINGS[int(b)]}" for a, b in zip(ex.kind, ex.weighting)]
    yield from _records(sid, contrasts, list(range(n)), cleans, masks, coils, (images, fields, sigmas), config)


def generate(config: PairsConfig, split: str, manual_dir=None) -> Iterator[tuple[str, dict]]:
  """Yields (unique key, example) for `split`; see the module docstring for the fields."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if config.anatomy == "mixed":
    yield from _generate_mixed(config, split)
    return
  ranges = physics.sampling.training_ranges(config.corruption) if config.corruption else None
  for s_idx, load in enumerate(_subjects(config, split, manual_dir)):
    vol, mask, contrast, sid = load()
    rng = _subject_rng(config, sid)
    key = jax.random.key(int(rng.integers(2 ** 31)))
    n = config.slices_per_subject
    if config.dims == 2:
      idx = slice_indices(mask, n)
      cleans = np.stack([_fit(vol[..., z], config.size) for z in idx])
      masks = np.stack([_fit(mask[..., z], config.size) for z in idx])
      positions = [int(z) for z in idx]
    else:
      corners = patch_corners(mask, config.size, n, rng)
      crop = lambda a, c: _fit(a[tuple(slice(o, o + config.size) for o in c)], config.size)
      cleans = np.stack([crop(vol, c) for c in corners])
      masks = np.stack([crop(mask, c) for c in corners])
      positions = [int(np.ravel_multi_index(c, mask.shape)) for c in corners]
    coils = rng.choice(np.asarray(config.coils), size=n)
    corrupted = corrupt(cleans.astype(np.float32), masks, coils, key, ranges)
    yield from _records(sid, [contrast] * n, positions, cleans, masks, coils, corrupted, config)
