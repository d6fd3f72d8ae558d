"""Evaluate the restorer against the classic pipeline, and its faithfulness (`mri-jax evaluate`).

Test sets (never used in training):
- synthetic: held-out subjects of the `mri_pairs` test split (clean, corrupted, true field, mask);
- real (`real_set='dipy'`): dipy's `S0_10slices.nii.gz` (a real single-subject b = 0 brain scan,
  128² × 10 slices at 2 mm, shipped inside dipy's wheel: no download), corrupted here by the
  simulator with the training ranges. It carries its own acquisition noise, so its "clean"
  reference is not noise-free and every method's scores on it are bounded by that.
- real-scan validation set (`real_set='full'`, the default): seven groups of real scans shipped in
  dipy, nibabel and heudiconv wheels (`mri_jax.realscans`: b = 0 and T2 brains, DWI with real
  8-coil noise, BOLD EPI, a 3 T diffusion mosaic whose reference is the mean of two b ≈ 5 repeats,
  a 64² EPI, a phantom), at most `real_slices` slices each, every group corrupted twice: by the
  simulator and by the independent plain-NumPy model of `realscans.corrupt_independent`
  (polynomial log field + Rician, or a ring of 8 Biot–Savart loop coils + RSS), so the restorer
  is not judged only by the simulator it was trained on. The restorer runs with K = 1 and the
  model's default K there; the same caveat on noisy references holds.

Methods, all on the same slices: the corrupted input; SimpleITK N4 (shrink ≤ 4, the fit on ≥ 64 px per axis, as restore's); N4 followed by
dipy's Rician non-local means and by scikit-image's NLM (σ estimated from the N4 image by
scikit-image's wavelet estimator); BM3D when the `bm3d` package is installed; the oracle
"divide by the true bias field"; the restorer with K = 1 and K = `steps` network passes.

Metrics inside the clean image's foreground mask after dividing each image by its foreground
mean (`metrics.masked_scores`): SSIM, PSNR; "bias residual" = std of log(G∗x / G∗clean) over the
mask with a Gaussian G of σ = 4 px (0 = no low-frequency intensity error left; the white-matter
CV is not available because the test split stores no tissue maps); seconds per slice; the
do-no-harm count: slices (and, on the real-scan set, groups) whose SSIM is below the corrupted
input's.

Faithfulness (`faithfulness=True`): small hypo- and hyper-intense discs (lesions, never seen in
training) are put into clean test slices before corruption; reported is the fraction of each
lesion's contrast against its surrounding ring that the restored image keeps (1 = all), the std
across 8 sampling seeds relative to σ, the 1-step vs K-step difference, and the mean magnitude
the restorer puts in the background (air) relative to the foreground mean.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
from scipy import ndimage

from mri_jax import metrics, realscans
from mri_jax.errors import UserInputError

REAL_SETS = ("full", "dipy", "none")


@dataclasses.dataclass
class TestSet:
  """A set of 2-D test slices: clean, simulator-corrupted, the true bias field, foreground mask, σ."""

  name: str
  clean: np.ndarray      # (N, X, Y)
  corrupted: np.ndarray
  bias: np.ndarray
  mask: np.ndarray       # bool
  sigma: np.ndarray      # (N,) absolute σ
  group: str = ""        # real-scan group key (realscans.GROUPS), "" otherwise
  corruption: str = ""   # 'simulator' or 'independent' for the real-scan set


def synthetic_test_set(data_dir, dataset: str = "mri_pairs/slices128", split: str = "test",
                       slices: int = 64) -> TestSet:
  """`slices` examples spread evenly over the split (deterministic)."""
  from mri_jax.data import pipeline

  try:
    source = pipeline.data_source(dataset, split, data_dir=data_dir)
  except Exception as err:
    raise UserInputError(f"cannot read dataset {dataset} ({split}) under '{data_dir}' ({type(err).__name__}); "
                         "build it with `mri-jax build-data`") from None
  idx = np.unique(np.linspace(0, len(source) - 1, min(slices, len(source))).round().astype(int))
  ex = [source[int(i)] for i in idx]
  get = lambda k: np.stack([np.asarray(e[k]) for e in ex])
  return TestSet(f"synthetic held-out ({dataset}, {split})", get("clean").astype(np.float32),
                 get("corrupted").astype(np.float32), get("bias").astype(np.float32), get("mask") > 0,
                 get("noise_sigma").astype(np.float32))


def real_clean_slices() -> tuple[np.ndarray, np.ndarray]:
  """dipy's S0_10slices (real b = 0 scan) as (N, X, Y) clean slices scaled to the 99.5th
  percentile of the foreground, and their foreground masks (`realscans.foreground_masks`)."""
  if not optional("dipy"):
    raise UserInputError("the real test images come from dipy's wheel: pip install dipy (or pass --no-real)")
  scan = realscans.dipy_b0(slices=None)
  return scan.clean, scan.mask


def corrupt_slices(clean: np.ndarray, mask: np.ndarray, seed: int, coils=(1, 4, 8, 16, 32)):
  """Corrupts slices with the training ranges (coil count drawn per slice); (images, fields, σ)."""
  from mri_jax.data import pairs

  rng = np.random.default_rng(seed)
  n_coils = rng.choice(np.asarray(coils), size=len(clean))
  return pairs.corrupt(clean, mask, n_coils, jax.random.key(seed))


def simulate_stack(clean: np.ndarray, mask: np.ndarray, seed: int, coils=(1, 8, 32)):
  """Simulator corruption with the coil count cycling through `coils` over the slices; (images,
  fields, σ). Each count runs on the whole stack, so the simulator compiles once per count and
  image size (≈ 8 s each on 2 CPU cores), not once per (count, sub-batch size)."""
  n_coils = np.asarray(coils)[np.arange(len(clean)) % len(coils)]
  out = (np.zeros_like(clean), np.ones_like(clean), np.zeros(len(clean), np.float32))
  for c in np.unique(n_coils):
    res = corrupt_slices(clean, mask, seed + int(c), coils=(int(c),))
    for o, r in zip(out, res):
      o[n_coils == c] = r[n_coils == c]
  return out


def real_test_set(seed: int = 1) -> TestSet:
  """dipy's real b = 0 scan (never used in training), corrupted by the simulator with `seed`."""
  clean, mask = real_clean_slices()
  images, fields, sigmas = corrupt_slices(clean, mask, seed)
  return TestSet("real (dipy S0_10slices, simulator-corrupted)", clean, images, fields, mask, sigmas)


def real_scan_sets(seed: int = 1, slices: int = 8,
                   groups=realscans.GROUPS) -> tuple[list[realscans.Scan], list[TestSet]]:
  """The real-scan validation set: the groups of `realscans.load`, and each group corrupted by the
  simulator (training ranges, 1 / 8 / 32 coils in turn; seed `seed`) and by the independent model
  (seed `seed` + 1), in that order."""
  scans = realscans.load(groups, slices)
  out = []
  for scan in scans:
    images, fields, sigmas = simulate_stack(scan.clean, scan.mask, seed)
    out.append(TestSet(f"{scan.title}, simulator", scan.clean, images, fields, scan.mask, sigmas,
                       scan.key, "simulator"))
    images, fields, sigmas, _ = realscans.corrupt_independent(scan.clean, scan.mask, seed + 1)
    out.append(TestSet(f"{scan.title}, independent", scan.clean, images, fields, scan.mask, sigmas,
                       scan.key, "independent"))
  return scans, out


# --------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------
N4_LABEL = "N4 (SimpleITK, shrink ≤ 4, fit ≥ 64 px)"  # the row of `n4_sitk_slices`


def n4_sitk_slices(images: np.ndarray) -> tuple[np.ndarray, float]:
  """SimpleITK N4 (shrink 4, lowered so the fit keeps ≥ 64 voxels per axis as restore's N4 does:
  `restore.RESTORE_N4_MIN_SHRUNK`; Otsu mask) per slice; (corrected, seconds per slice). The
  classic pipelines start from it, so they get the same N4 as the restorer."""
  from mri_jax import n4, restore

  settings = n4.N4Settings(shrink=4, min_shrunk=restore.RESTORE_N4_MIN_SHRUNK)
  t = time.perf_counter()
  out = np.stack([np.asarray(n4.n4_sitk(x, settings=settings).corrected) for x in images])
  return out.astype(np.float32), (time.perf_counter() - t) / len(images)


FIELD_LABEL = "N4 (JAX, restore's settings) + field network"  # the row of `n4_field_slices`


def n4_field_slices(model, images: np.ndarray) -> tuple[np.ndarray, float]:
  """Restore's bias correction alone, per slice: JAX N4 with restore's settings on Otsu's mask,
  refined by the field network (`mri_jax.models.fieldnet`) with restore's default weight
  (`restore.DEFAULT_FIELD_NET`); (corrected, seconds per slice)."""
  from mri_jax import n4, restore

  settings = restore.restore_n4_settings(model)
  restore.field_model()  # loaded before the clock starts
  t = time.perf_counter()
  out = []
  for x in images:
    m = np.asarray(n4.otsu_mask(x))[None]
    lf = np.asarray(n4.n4(x, m[0], settings=settings).log_field)[None]
    lf = lf + restore._field_residual(x[None] * np.exp(-lf), lf, m, restore.DEFAULT_FIELD_NET)
    out.append(x * np.exp(-lf[0]))
  return np.stack(out).astype(np.float32), (time.perf_counter() - t) / len(images)


# dipy's nlmeans works on 3-D volumes: a 2-D slice is repeated along a third axis deep enough for its
# patch and search radii (1 + 3 on each side) and the middle copy is kept; only the planes whose
# patches reach the middle one are filtered (the mask), which gives the same middle plane as the
# whole stack at a quarter of the cost. Passed as one slice of depth 1, its patches ran over padding
# along that axis: output foreground means fell by 7–12 % and SSIM to 0.61–0.87 where N4 alone had
# 0.93–0.97 (the figures before 2026-11-28's fifth pass).
_DIPY_PATCH, _DIPY_BLOCK = 1, 3


def nlm_dipy(images: np.ndarray) -> tuple[np.ndarray, float]:
  """dipy's Rician-aware non-local means per slice (σ: scikit-image's wavelet estimate); (denoised,
  wall seconds per slice)."""
  from dipy.denoise.nlmeans import nlmeans
  from skimage.restoration import estimate_sigma

  depth = 2 * (_DIPY_PATCH + _DIPY_BLOCK) + 1
  mid = depth // 2
  t = time.perf_counter()
  out = []
  for x in images:
    s = float(estimate_sigma(x))
    stack = np.repeat(x[..., None].astype(np.float64), depth, axis=2)
    mask = np.zeros(stack.shape, bool)
    mask[..., mid - _DIPY_PATCH:mid + _DIPY_PATCH + 1] = True
    out.append(nlmeans(stack, sigma=s, mask=mask, rician=True, patch_radius=_DIPY_PATCH,
                       block_radius=_DIPY_BLOCK)[..., mid])
  return np.stack(out).astype(np.float32), (time.perf_counter() - t) / len(images)


def nlm_skimage(images: np.ndarray) -> tuple[np.ndarray, float]:
  """scikit-image's non-local means (fast mode, h = 0.8 σ as its docs suggest) per slice."""
  from skimage.restoration import denoise_nl_means, estimate_sigma

  t = time.perf_counter()
  out = []
  for x in images:
    s = float(estimate_sigma(x))
    out.append(denoise_nl_means(x, h=0.8 * s, sigma=s, fast_mode=True, patch_size=5, patch_distance=6))
  return np.stack(out).astype(np.float32), (time.perf_counter() - t) / len(images)


def bm3d_slices(images: np.ndarray):
  """BM3D per slice when the `bm3d` package is installed, else None."""
  try:
    import bm3d
    from skimage.restoration import estimate_sigma
  except ImportError:
    return None
  t = time.perf_counter()
  out = np.stack([bm3d.bm3d(x, sigma_psd=float(estimate_sigma(x))) for x in images])
  return out.astype(np.float32), (time.perf_counter() - t) / len(images)


def optional(name: str) -> bool:
  """Whether the optional package `name` (e.g. bm3d) is installed."""
  import importlib.util

  return importlib.util.find_spec(name) is not None


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
_scores = jax.jit(jax.vmap(metrics.masked_scores))


def bias_residual(x: np.ndarray, clean: np.ndarray, mask: np.ndarray, sigma_px: float = 4.0) -> np.ndarray:
  """Per slice: std over the mask of log(G∗x / G∗clean) (mask-normalised Gaussian smoothing)."""
  out = []
  for a, c, m in zip(x, clean, mask):
    mf = m.astype(np.float64)
    w = ndimage.gaussian_filter(mf, sigma_px) + 1e-12
    ga = ndimage.gaussian_filter(np.maximum(a, 0) * mf, sigma_px) / w
    gc = ndimage.gaussian_filter(c * mf, sigma_px) / w
    ok = m & (ga > 1e-6) & (gc > 1e-6)
    r = np.log(ga[ok] / gc[ok])
    out.append(float(np.std(r)) if r.size else np.nan)
  return np.asarray(out)


def score(x: np.ndarray, ts: TestSet) -> dict:
  """Mean masked SSIM, PSNR and bias residual of the images `x` against `ts.clean`."""
  return _score(x, ts)[0]


def _score(x: np.ndarray, ts: TestSet) -> tuple[dict, np.ndarray]:
  """(`score`, each slice's (N,) SSIM): the per-slice SSIM gives `compare`'s do-no-harm count."""
  s = _scores(x.astype(np.float32), ts.clean, ts.mask)
  return ({"ssim": float(np.mean(s["ssim"])), "psnr": float(np.mean(s["psnr"])),
           "bias_residual": float(np.nanmean(bias_residual(x, ts.clean, ts.mask)))}, np.asarray(s["ssim"]))


def run_restorer(model, images: np.ndarray, k: int, *, seed: int = 0, batch_size: int = 16, timed: bool = False,
                 fidelity: float | None = None, lowfreq: float | None = None, independent: bool = True,
                 noise_clamp: float | None = None, blend: bool | None = None, wiener: bool | None = None,
                 field_net: float | None = None, noise_floor: bool | None = None):
  """Restores (N, X, Y) slices as one stack (slice axis 0); (images, seconds per slice), the time
  measured after a warm-up call (compilation) when `timed`. `independent`: the slices are separate
  images (`restore_array(independent_slices=True)`: one Otsu threshold per slice, N4 per slice, as
  the baselines run). Every test set here is one: the synthetic slices come from different
  subjects, and both corruptions of the real-scan groups (`simulate_stack`,
  `realscans.corrupt_independent`) draw each slice's field, σ and coil model on their own, so
  their intensities and noise floors change from slice to slice."""
  from mri_jax import restore

  kw = dict(steps=k, seed=seed, axis=0, batch_size=batch_size, fidelity=fidelity, check_consistency=False,
            independent_slices=independent, n4_mode="slices")
  if lowfreq is not None:
    kw["lowfreq"] = lowfreq
  if noise_clamp is not None:
    kw["noise_clamp"] = noise_clamp
  if blend is not None:
    kw["blend"] = blend
  if wiener is not None:
    kw["wiener"] = wiener
  if field_net is not None:
    kw["field_net"] = field_net
  if noise_floor is not None:
    kw["noise_floor"] = noise_floor
  if timed:
    restore.restore_array(images[:batch_size], model, **kw)
  res = restore.restore_array(images, model, **kw)
  return res.image, res.seconds["total"] / len(images)


def ae_ceiling(model, clean: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
  """The autoencoder's reconstruction of the clean slices, prepared exactly as the restorer's input
  (`restorer.prepare_slices`: foreground mean 1, centred padding): the restorer's ceiling. None for
  a pixel-space model."""
  from mri_jax.models import restorer as R

  if model.params.get("ae") is None:
    return None
  prep = R.prepare_slices(clean, mask, model.factor, n4_backend="none", scale=R.slice_scales(clean, mask))
  r = model.restorer
  fn = jax.jit(lambda p, v: r.decode(p, r.encode(p, v)))
  x = prep.corrupted[..., None]
  out = np.concatenate([np.asarray(fn(model.params["ae"], x[i:i + 16])) for i in range(0, len(x), 16)])
  return out[..., 0][prep.crop] * prep.scale[:, None, None]


def fidelity_ceiling(model, ts: TestSet) -> np.ndarray:
  """The decoder with the fidelity path, from the *clean* image's latent and the corrupted input's
  pixels (prepared as the restorer prepares them, N4 included): what a perfect latent UNet would
  give through this decoder."""
  from mri_jax import restore
  from mri_jax.models import fidelity
  from mri_jax.models import restorer as R

  clean = R.prepare_slices(ts.clean, ts.mask, model.factor, n4_backend="none", scale=R.slice_scales(ts.clean, ts.mask))
  noisy = R.prepare_slices(ts.corrupted, ts.mask, model.factor, n4_backend="jax",
                           n4_settings=restore.restore_n4_settings(model))
  r, p = model.restorer, model.params

  @jax.jit
  def fn(x, corrupted, n4, log_field):
    pixels = fidelity.pixels(corrupted[..., None], n4[..., None], log_field[..., None])
    return r.decode(p["ae"], r.encode(p["ae"], x[..., None]), p["fid"], pixels)[..., 0]

  out = np.concatenate([np.asarray(fn(clean.corrupted[i:i + 16], noisy.corrupted[i:i + 16], noisy.n4[i:i + 16],
                                      noisy.log_field[i:i + 16])) for i in range(0, len(ts.clean), 16)])
  return out[clean.crop] * clean.scale[:, None, None]


def compare(ts: TestSet, model, steps: tuple[int, ...], *, seed: int = 0, log=print) -> tuple[list, dict]:
  """Rows (method, SSIM, PSNR, bias residual, s/slice) and the images per method."""
  outputs = {"corrupted": (ts.corrupted, 0.0), "oracle: corrupted / true field": (ts.corrupted / ts.bias, 0.0)}
  log(f"[{ts.name}] SimpleITK N4 on {len(ts.clean)} slices...")
  n4_img, n4_t = n4_sitk_slices(ts.corrupted)
  outputs[N4_LABEL] = (n4_img, n4_t)
  if optional("dipy") and optional("pywt"):
    log(f"[{ts.name}] N4 + dipy NLM...")
    img, t = nlm_dipy(n4_img)
    outputs["N4 + NLM (dipy, Rician)"] = (img, n4_t + t)
  if optional("skimage") and optional("pywt"):
    log(f"[{ts.name}] N4 + scikit-image NLM...")
    img, t = nlm_skimage(n4_img)
    outputs["N4 + NLM (scikit-image)"] = (img, n4_t + t)
  bm = bm3d_slices(n4_img)
  if bm is not None:
    outputs["N4 + BM3D"] = (bm[0], n4_t + bm[1])
  log(f"[{ts.name}] N4 + the field network (restore's bias correction alone)...")
  nf_img, nf_t = n4_field_slices(model, ts.corrupted)
  outputs[FIELD_LABEL] = (nf_img, nf_t)
  bm = bm3d_slices(nf_img)
  if bm is not None:
    outputs["N4 + field network + BM3D"] = (bm[0], nf_t + bm[1])
  for k in steps:
    log(f"[{ts.name}] restorer, K = {k}...")
    outputs[f"restorer K = {k}"] = run_restorer(model, ts.corrupted, k, seed=seed, timed=True)
  rec = ae_ceiling(model, ts.clean, ts.mask)
  if rec is not None:
    outputs["autoencoder(clean): the restorer's ceiling"] = (rec, 0.0)
  log(f"[{ts.name}] restorer without the field network (N4's field alone, the eighth pass's change)...")
  outputs["restorer K = 1 without the field network (N4's field)"] = run_restorer(
      model, ts.corrupted, 1, seed=seed, field_net=0.0)
  log(f"[{ts.name}] restorer keeping the noise floor (the twelfth pass's change)...")
  outputs["restorer K = 1, noise floor kept"] = run_restorer(model, ts.corrupted, 1, seed=seed, noise_floor=False)
  log(f"[{ts.name}] restorer without the pilot Wiener filter (the seventh pass's change)...")
  outputs["restorer K = 1, SURE blend without the pilot Wiener filter"] = run_restorer(
      model, ts.corrupted, 1, seed=seed, wiener=False)
  log(f"[{ts.name}] restorer without the SURE blend (noise clamp K = 1, the previous default)...")
  outputs["restorer K = 1, no SURE blend, noise clamp K = 1"] = run_restorer(
      model, ts.corrupted, 1, seed=seed, blend=False, noise_clamp=1.0)
  log(f"[{ts.name}] restorer without the noise clamp...")
  outputs["restorer K = 1, SURE blend, no noise clamp"] = run_restorer(model, ts.corrupted, 1, seed=seed,
                                                                      noise_clamp=0.0)
  log(f"[{ts.name}] restorer without the low-frequency fix, the blend and the clamp...")
  outputs["restorer K = 1, no low-frequency fix, no blend, no clamp (the network alone)"] = run_restorer(
      model, ts.corrupted, 1, seed=seed, lowfreq=0.0, noise_clamp=0.0, blend=False)
  if model.params.get("fid") is not None:
    log(f"[{ts.name}] restorer without its fidelity path (w = 0) and the fidelity ceiling...")
    outputs["restorer K = 1, fidelity w = 0 (plain decoder), no low-frequency fix, no blend, no clamp"] = run_restorer(
        model, ts.corrupted, 1, seed=seed, fidelity=0.0, lowfreq=0.0, noise_clamp=0.0, blend=False)
    outputs["decoder(clean latent) + fidelity path of the input: ceiling"] = (fidelity_ceiling(model, ts), 0.0)
  rows = []
  base = base_slices = None  # the corrupted input's (the first row's) mean and per-slice SSIM
  for name, (img, t) in outputs.items():
    s, per_slice = _score(img, ts)
    if base is None:
      base, base_slices = s["ssim"], per_slice
    rows.append({"method": name, **s, "structural_error_reduction": 1.0 - (1.0 - s["ssim"]) / max(1.0 - base, 1e-9),
                 "seconds_per_slice": t, "slices_below_input": int(np.sum(per_slice < base_slices)),
                 "slices": len(ts.clean)})
  return rows, {k: v[0] for k, v in outputs.items()}


# --------------------------------------------------------------------------------------------
# Faithfulness
# --------------------------------------------------------------------------------------------
def insert_lesions(clean: np.ndarray, mask: np.ndarray, seed: int, per_slice: int = 4, radius: float = 2.5,
                   contrast: float = 0.5):
  """Puts `per_slice` discs (half ×(1−contrast), half ×(1+contrast)) well inside each mask.

  Returns (lesioned images, list of (slice, centre, sign)).
  """
  rng = np.random.default_rng(seed)
  out = clean.copy()
  lesions = []
  yy, xx = np.mgrid[:clean.shape[1], :clean.shape[2]]
  for i, m in enumerate(mask):
    inner = ndimage.binary_erosion(m, iterations=int(3 * radius) + 2)
    cand = np.argwhere(inner)
    taken = np.zeros_like(m)
    for j in range(per_slice):
      if not len(cand):
        break
      for _ in range(50):
        c = cand[rng.integers(len(cand))]
        if not taken[c[0], c[1]]:
          break
      disc = (xx - c[1]) ** 2 + (yy - c[0]) ** 2 <= radius ** 2
      taken |= (xx - c[1]) ** 2 + (yy - c[0]) ** 2 <= (4 * radius) ** 2
      sign = -1 if j % 2 == 0 else 1
      out[i][disc] *= (1.0 + sign * contrast)
      lesions.append((i, (int(c[0]), int(c[1])), sign))
  return out, lesions


def lesion_contrast_kept(x: np.ndarray, ref: np.ndarray, lesions, radius: float = 2.5) -> dict:
  """Mean fraction of each lesion's contrast vs its ring (radius … 2·radius) that `x` keeps."""
  yy, xx = np.mgrid[:ref.shape[1], :ref.shape[2]]
  kept = {-1: [], 1: []}
  for i, (cy, cx), sign in lesions:
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    disc, ring = d2 <= radius ** 2, (d2 > (radius + 1) ** 2) & (d2 <= (2 * radius + 1) ** 2)
    c_ref = ref[i][disc].mean() / ref[i][ring].mean() - 1.0
    c_x = x[i][disc].mean() / max(x[i][ring].mean(), 1e-9) - 1.0
    kept[sign].append(c_x / c_ref)
  return {"hypo": float(np.mean(kept[-1])), "hyper": float(np.mean(kept[1]))}


def faithfulness(ts: TestSet, model, k: int, *, seed: int = 0, seeds: int = 8, log=print) -> tuple[dict, dict]:
  """Lesion contrast kept, std across `seeds` sampling seeds / σ, |K=1 − K=k| and background
  intensity of the restorer on `ts`; returns (metrics, images for the montage)."""
  log(f"[faithfulness] lesions in {len(ts.clean)} slices, corruption, restoration...")
  lesioned, lesions = insert_lesions(ts.clean, ts.mask, seed)
  images, fields, sigmas = corrupt_slices(lesioned, ts.mask, seed + 7)
  r1, _ = run_restorer(model, images, 1, seed=seed)
  rk, _ = run_restorer(model, images, k, seed=seed)
  kept, _ = run_restorer(model, images, 1, seed=seed, noise_floor=False)
  n4_img, _ = n4_sitk_slices(images)
  out = {"lesions": len(lesions),
         "lesion_contrast_kept_restorer_K1": lesion_contrast_kept(r1, lesioned, lesions),
         "lesion_contrast_kept_restorer_K1_noise_floor_kept": lesion_contrast_kept(kept, lesioned, lesions),
         f"lesion_contrast_kept_restorer_K{k}": lesion_contrast_kept(rk, lesioned, lesions),
         "lesion_contrast_kept_corrupted": lesion_contrast_kept(images, lesioned, lesions),
         "lesion_contrast_kept_n4": lesion_contrast_kept(n4_img, lesioned, lesions)}
  pictures = {"lesioned clean": lesioned, "lesioned corrupted": images, "restored K = 1": r1, "lesions": lesions,
              "N4": n4_img}
  if optional("dipy") and optional("pywt"):
    nl, _ = nlm_dipy(n4_img)
    out["lesion_contrast_kept_n4_nlm_dipy"] = lesion_contrast_kept(nl, lesioned, lesions)
    pictures["N4 + NLM"] = nl
  fg_mean = np.array([c[m].mean() for c, m in zip(lesioned, ts.mask)])
  log(f"[faithfulness] {seeds} sampling seeds at K = {k}...")
  runs = np.stack([run_restorer(model, images, k, seed=seed + s)[0] for s in range(seeds)])
  sd = runs.std(axis=0)
  out["seed_std_over_sigma"] = float(np.mean([sd[i][ts.mask[i]].mean() / sigmas[i] for i in range(len(sd))]))
  out["seed_std_over_foreground_mean"] = float(np.mean([sd[i][ts.mask[i]].mean() / fg_mean[i] for i in range(len(sd))]))
  out[f"mean_abs_diff_K1_vs_K{k}_over_foreground_mean"] = float(np.mean(
      [np.abs(r1[i] - rk[i])[ts.mask[i]].mean() / fg_mean[i] for i in range(len(r1))]))
  air = [~ndimage.binary_dilation(m, iterations=3) for m in ts.mask]
  with_air = [i for i in range(len(r1)) if air[i].sum() >= 16]  # tight crops hold no air
  for name, x in (("restored", r1), ("clean", lesioned), ("corrupted", images)):
    out[f"background_mean_{name}_over_foreground_mean"] = (
        float(np.mean([x[i][air[i]].mean() / fg_mean[i] for i in with_air])) if with_air else float("nan"))
  return out, pictures


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def markdown_table(rows: list[dict]) -> str:
  """The comparison rows (method, SSIM, PSNR, bias residual, 1 − SSIM reduction, slices whose SSIM
  is below the corrupted input's, s/slice) as markdown."""
  head = ("| method | SSIM | PSNR (dB) | bias residual | 1−SSIM reduction | slices below the input | s / slice |\n"
          "|---|---|---|---|---|---|---|\n")
  return head + "\n".join(
      f"| {r['method']} | {r['ssim']:.4f} | {r['psnr']:.2f} | {r['bias_residual']:.4f} | "
      f"{100 * r['structural_error_reduction']:.1f}% | {r['slices_below_input']} of {r['slices']} | "
      f"{r['seconds_per_slice']:.4f} |" for r in rows) + "\n"


def montage(path: Path, sets: list[tuple[TestSet, dict]], extra=None) -> None:
  """PNG of one slice per test set: corrupted, N4, N4 + NLM, restorer, clean (and `extra` rows); a
  method that did not run (e.g. dipy missing) gets an empty panel marked "not run", never a black
  image that reads as its output."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cols = ["corrupted", N4_LABEL, "N4 + NLM (dipy, Rician)", "restorer K = 1", "clean"]
  rows = []
  for ts, imgs in sets:
    i = len(ts.clean) // 2
    rows.append((ts.name.split(" (")[0], [imgs[c][i] if c in imgs else None for c in cols[:-1]] + [ts.clean[i]],
                 ts.mask[i]))
  if extra is not None:
    i = extra["lesions"][0][0]
    pick = lambda key: extra[key][i] if key in extra else None  # noqa: E731
    rows.append(("lesions", [pick("lesioned corrupted"), pick("N4"), pick("N4 + NLM"), pick("restored K = 1"),
                             pick("lesioned clean")], None))
  fig, axes = plt.subplots(len(rows), len(cols) + 1, figsize=(2.6 * (len(cols) + 1), 2.6 * len(rows)), squeeze=False)
  for r, (name, panels, _) in enumerate(rows):
    ref = panels[-1]
    fg = ref > 0.1 * ref.max()
    norm = lambda x: x / max(float(x[fg].mean()), 1e-9)
    for c, img in enumerate(panels):
      if img is None:
        axes[r, c].text(0.5, 0.5, "not run", ha="center", va="center", fontsize=8, transform=axes[r, c].transAxes)
      else:
        axes[r, c].imshow(norm(img).T, cmap="gray", vmin=0, vmax=2.0, origin="lower")
      if r == 0:
        axes[r, c].set_title(cols[c], fontsize=8)
    err = np.abs(norm(panels[3]) - norm(ref))
    axes[r, -1].imshow(err.T, cmap="magma", vmin=0, vmax=0.5, origin="lower")
    if r == 0:
      axes[r, -1].set_title("|restored − clean|", fontsize=8)
    axes[r, 0].set_ylabel(name, fontsize=8)
    for a in axes[r]:
      a.set_xticks([]), a.set_yticks([])
  fig.tight_layout()
  from mri_jax.io.nifti import save_figure

  save_figure(path, fig, dpi=80)
  plt.close(fig)


def _by_model(results: list[tuple[TestSet, list[dict]]]) -> dict:
  """{corruption: {method: {group: row}}} of the real-scan results."""
  out = {}
  for ts, rows in results:
    for r in rows:
      out.setdefault(ts.corruption, {}).setdefault(r["method"], {})[ts.group] = r
  return out


def real_scan_markdown(scans: list[realscans.Scan], results: list[tuple[TestSet, list[dict]]]) -> str:
  """The real-scan tables: the groups and their references; per corruption model the mean over
  groups (each group weighted equally) and SSIM / PSNR per group."""
  md = ["### real-scan validation set: groups\n",
        "| group | slices | size | reference | reference noise σ / mean (est.) |\n|---|---|---|---|---|"]
  md += [f"| {s.title} | {len(s.clean)} | {s.clean.shape[1]}×{s.clean.shape[2]} | {s.reference} | "
         f"{s.reference_noise:.3f} |" for s in scans]
  titles = {s.key: s.title.split(" (")[0] for s in scans}
  for model, methods in _by_model(results).items():
    md.append(f"\n### real-scan validation set, {model} corruption: mean over {len(titles)} groups\n")
    md.append("| method | SSIM | PSNR (dB) | bias residual | slices below the input | groups below the input |\n"
              "|---|---|---|---|---|---|")
    inputs = methods.get("corrupted", {})
    for name, per in methods.items():
      mean = {k: float(np.mean([r[k] for r in per.values()])) for k in ("ssim", "psnr", "bias_residual")}
      below = sum(r["slices_below_input"] for r in per.values())
      groups = sum(r["ssim"] < inputs[g]["ssim"] for g, r in per.items() if g in inputs)
      md.append(f"| {name} | {mean['ssim']:.4f} | {mean['psnr']:.2f} | {mean['bias_residual']:.4f} | "
                f"{below} of {sum(r['slices'] for r in per.values())} | {groups} of {len(per)} |")
    md.append(f"\n{model} corruption, SSIM / PSNR per group:\n")
    md.append("| method | " + " | ".join(titles.values()) + " |\n|---|" + "---|" * len(titles))
    for name, per in methods.items():
      md.append(f"| {name} | " + " | ".join(f"{per[g]['ssim']:.3f} / {per[g]['psnr']:.1f}" if g in per else "–"
                                            for g in titles) + " |")
  return "\n".join(md) + "\n"


def real_scan_montage(path: Path, shown: list[tuple[TestSet, dict]], restorer: str = "restorer K = 1") -> None:
  """PNG, one row per real-scan group (its middle slice): clean, then corrupted / N4 + NLM /
  restorer for each corruption model; each panel divided by its own mean over the foreground."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from mri_jax.io.nifti import save_figure

  methods = ("corrupted", "N4 + NLM (dipy, Rician)", restorer)
  groups = {}
  for ts, imgs in shown:
    groups.setdefault(ts.group, {})[ts.corruption] = (ts, imgs)
  models = sorted({ts.corruption for ts, _ in shown}, key=lambda m: m != "simulator")
  cols = ["clean"] + [f"{m}: {c.split(' (')[0]}" for m in models for c in methods]
  fig, axes = plt.subplots(len(groups), len(cols), figsize=(1.9 * len(cols), 1.9 * len(groups)), squeeze=False)
  for r, per in enumerate(groups.values()):
    ts = next(iter(per.values()))[0]
    i = len(ts.clean) // 2
    m_i = ts.mask[i]
    panels = [ts.clean[i]] + [per[m][1].get(c, np.zeros_like(ts.clean))[i] if m in per else np.zeros_like(ts.clean[i])
                              for m in models for c in methods]
    for c, img in enumerate(panels):
      # Each panel over its own foreground mean, as the metrics see it.
      axes[r, c].imshow(img.T / max(float(img[m_i].mean()), 1e-9), cmap="gray", vmin=0, vmax=2.0, origin="lower")
      axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
      if r == 0:
        axes[r, c].set_title(cols[c], fontsize=7)
    axes[r, 0].set_ylabel(ts.name.split(" (")[0].split(",")[0], fontsize=7)
  fig.tight_layout()
  save_figure(path, fig, dpi=72)
  plt.close(fig)


def evaluate(outdir, *, data_dir=None, dataset: str = "mri_pairs/slices128", split: str = "test",
             slices: int = 64, steps: int = 4, checkpoint=None, real: bool = True, real_set: str = "full",
             real_slices: int = 8, real_groups=realscans.GROUPS, with_faithfulness: bool = False,
             seed: int = 0, log=print) -> dict:
  """Runs the comparison (and optionally faithfulness); writes results.md/json and montage.png.

  Args:
    outdir: output directory (created).
    data_dir, dataset, split, slices: the synthetic held-out set (skipped when `data_dir` is None).
    steps: the multi-step K compared with K = 1.
    checkpoint: workdir or exported weights (None: the shipped weights).
    real: False skips every real image (the same as `real_set='none'`).
    real_set: 'full' (the real-scan validation set, both corruption models; also writes
      real_scans.png), 'dipy' (dipy's S0_10slices, simulator-corrupted only) or 'none'.
    real_slices: at most this many slices per real-scan group.
    real_groups: the real-scan groups (`realscans.GROUPS`).
    with_faithfulness: also run the lesion, seed-variance, 1-vs-K and background tests.
    seed: seed of corruption, lesions and sampling.
    log: progress messages.

  Returns:
    The report (also written to results.json) with its markdown under "markdown".
  """
  from mri_jax import restore
  from mri_jax.io.nifti import atomic_write_bytes

  real_set = real_set if real else "none"
  if real_set not in REAL_SETS:
    raise UserInputError(f"--real-set must be one of {', '.join(REAL_SETS)}, got {real_set!r}")
  if slices < 1:
    raise UserInputError(f"--slices must be ≥ 1, got {slices}")
  if real_slices < 2:   # the restorer reads a one-slice stack (1, X, Y) as a too-thin volume
    raise UserInputError(f"--real-slices must be ≥ 2, got {real_slices}")
  realscans.check_groups(real_groups)
  if data_dir is None and real_set == "none":
    raise UserInputError("nothing to evaluate: give --data-dir (synthetic test split) and/or keep the real images")
  model = restore.load_model(checkpoint)
  if not 1 <= steps <= model.max_steps:
    raise UserInputError(f"--steps must be in [1, {model.max_steps}], got {steps}")
  outdir = Path(outdir)
  if outdir.exists() and not outdir.is_dir():
    raise UserInputError(f"'{outdir}' exists and is not a directory")
  sets, scans, real_sets = [], [], []
  if data_dir is not None:
    sets.append(synthetic_test_set(data_dir, dataset, split, slices))
  if real_set == "dipy":
    if not optional("dipy"):
      raise UserInputError("the real test images come from dipy's wheel: pip install dipy (or pass --no-real)")
    sets.append(real_test_set(seed + 1))
  elif real_set == "full":
    scans, real_sets = real_scan_sets(seed + 1, real_slices, real_groups)
  outdir.mkdir(parents=True, exist_ok=True)
  ks = tuple(sorted({1, steps}))
  report = {"model": model.source, "steps": list(ks), "sets": {}}
  md = [f"Model: `{model.source}`; metrics inside the foreground after normalising by its mean.\n"]

  # Synthetic held-out set and the single dipy scan: the full table each.
  shown = []
  for ts in sets:
    rows, imgs = compare(ts, model, ks, seed=seed, log=log)
    report["sets"][ts.name] = {"slices": len(ts.clean), "rows": rows}
    md.append(f"### {ts.name}: {len(ts.clean)} slices\n\n" + markdown_table(rows))
    shown.append((ts, imgs))

  # Real-scan validation set: the model's default K (and K = 1), compact tables, its own montage.
  real_results, real_shown = [], []
  real_ks = tuple(sorted({1, model.default_steps}))
  for ts in real_sets:
    rows, imgs = compare(ts, model, real_ks, seed=seed, log=log)
    real_results.append((ts, rows))
    real_shown.append((ts, imgs))
  if real_sets:
    report["real_scans"] = {
        "steps": list(real_ks), "slices_per_group": real_slices,
        "groups": [{"key": s.key, "title": s.title, "slices": len(s.clean), "shape": list(s.clean.shape[1:]),
                    "reference": s.reference, "reference_noise": s.reference_noise} for s in scans],
        "sets": [{"name": ts.name, "group": ts.group, "corruption": ts.corruption, "slices": len(ts.clean),
                  "rows": rows} for ts, rows in real_results]}
    md.append(real_scan_markdown(scans, real_results))
    real_scan_montage(outdir / "real_scans.png", real_shown)

  # Faithfulness on the first set (synthetic when given).
  extra = None
  if with_faithfulness:
    ts = (sets + real_sets)[0]
    f, extra = faithfulness(ts, model, steps, seed=seed, log=log)
    report["faithfulness"] = {"set": ts.name, **f}
    md.append(f"### faithfulness ({ts.name})\n\n| measure | value |\n|---|---|\n" + "\n".join(
        f"| {k} | {json.dumps(v) if isinstance(v, dict) else f'{v:.4g}'} |" for k, v in f.items()) + "\n")
  montage(outdir / "montage.png", shown + real_shown[:1], extra)
  atomic_write_bytes(outdir / "results.json", json.dumps(report, indent=2).encode())
  atomic_write_bytes(outdir / "results.md", "\n".join(md).encode())
  report["markdown"] = "\n".join(md)
  return report
