"""Physics consistency of a restoration: is the input explained by restored × field + noise?

A restorer should remove noise and the bias field and nothing else. The acquisition model is

    input ≈ restored · field + noise,   field smooth, noise white with the input's σ,

so after restoring, the residual r = input − f̂ · restored should look like the input's noise:
same energy, no structure. f̂ is the field the restorer estimated (restore passes its N4 field)
times the least-squares polynomial of order `field_order` fitted to log(input / (restored × that
field)) on the foreground's well-lit voxels — or the polynomial alone when no field is given. (A
polynomial alone cannot follow a coil's hotspot: on the demo volume it flagged 39 of 95 restored
slices, and 27 when given the true clean image; with restore's N4 field, none.) Per slice this
module reports

- `energy`: mean(r²) / σ̂² inside the foreground, σ̂ estimated from the *input* alone
  (`input_sigma`: the smaller of a robust Laplacian-difference estimate in the foreground and a
  Haar estimate in the air — the σ restore's blend and clamp use): ≈ 1 when the output departs
  from the input by noise only; < 1 when the restorer kept some noise; ≫ 1 when it changed the image;
- `structure`: the residual's energy after a Gaussian low-pass (σ = `structure_px`), relative to
  what white noise of σ̂ leaves after the same low-pass (a factor 1/(4π σ_px²)): ≈ 1 for a
  noise-like residual, ≫ 1 where the residual has shape — anatomy erased from or invented in the
  output. Slices whose `structure` exceeds `warn_structure` are flagged.

The module also holds the magnitude noise model restore uses: `input_sigma`, and the noise floor
of a root sum of squares (`noise_floor`, `chi_mean`, `unbias`; restore removes it last).

`residual_map` is r / σ̂ (the map written by `restore --save-residual`). Rician statistics make
r slightly non-zero-mean in dark regions; the scores are meant for comparison against the
thresholds (calibrated on the real-scan validation set), not as exact χ² statistics.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage

_LAPLACE_DIFF = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)


def _laplace_response(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
  """The image convolved with N (a difference of two Laplacians, ‖N‖ = 6), inside `mask` (all of it
  when the mask is absent or under 16 voxels), flattened."""
  conv = ndimage.convolve(image.astype(np.float64), _LAPLACE_DIFF, mode="reflect")
  return conv[mask] if mask is not None and mask.sum() >= 16 else conv.ravel()


def noise_sigma(image: np.ndarray, mask: np.ndarray | None = None) -> float:
  """Immerkær (1996) noise σ of a 2-D image from |image ∗ N| (N: difference of two Laplacians),
  averaged over `mask` (default: everywhere); insensitive to smooth intensity variations."""
  return float(np.sqrt(np.pi / 2.0) / 6.0 * np.abs(_laplace_response(image, mask)).mean())


def robust_sigma(image: np.ndarray, mask: np.ndarray | None = None) -> float:
  """Noise σ of a 2-D image from the median absolute deviation of the same Laplacian-difference
  response as `noise_sigma` (1.4826 · MAD / ‖N‖ with ‖N‖ = 6), over `mask`: anatomy edges, which
  inflate Immerkær's mean, barely move the median."""
  inside = _laplace_response(image, mask)
  return float(1.4826 * np.median(np.abs(inside - np.median(inside))) / 6.0)


# `input_sigma`: the air is what lies beyond the foreground grown by AIR_MARGIN voxels, less the
# voxels that are exactly zero (padding, masking: noise is never exactly zero); it is used when it
# holds at least AIR_MIN_BLOCKS whole 2×2 blocks.
AIR_MARGIN = 3
AIR_MIN_BLOCKS = 200  # the MAD's standard error is then about 8 %; the real-scan groups have 350–4,900
# A magnitude image's air is Rayleigh (one coil: std 0.655 σ) or χ with 2n degrees of freedom (n
# coils, root sum of squares: std → 0.707 σ), σ the noise of one real channel, which is the noise
# σ of the magnitude in tissue. One factor between the two bounds is within 4 % of either.
AIR_STD_OVER_SIGMA = 0.68


def haar_sigma(image: np.ndarray, mask: np.ndarray) -> float | None:
  """Noise σ of a 2-D image from the finest diagonal Haar detail (a − b − c + d) / 2 of the 2×2 blocks
  lying wholly in `mask`: 1.4826 · its median absolute value (Donoho's MAD estimate; a linear
  gradient and horizontal or vertical edges give 0). None when fewer than AIR_MIN_BLOCKS blocks
  qualify."""
  x = np.asarray(image, np.float64)
  X, Y = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
  blocks = [(slice(i, X, 2), slice(j, Y, 2)) for i in (0, 1) for j in (0, 1)]
  (a, b, c, d) = (x[s] for s in blocks)
  inside = np.logical_and.reduce([mask[s] for s in blocks])
  if inside.sum() < AIR_MIN_BLOCKS:
    return None
  detail = ((a - b - c + d) / 2.0)[inside]
  return float(1.4826 * np.median(np.abs(detail)))


def air_sigma(image: np.ndarray, mask: np.ndarray) -> float | None:
  """The noise σ (of tissue) measured in the air of a 2-D image: `haar_sigma` outside the foreground `mask` grown by
  AIR_MARGIN voxels, ÷ AIR_STD_OVER_SIGMA (the Rayleigh / χ air is narrower than tissue noise).
  Voxels that are exactly zero are not air but padding or masking (skull-stripped images); None
  when too little air is left."""
  air = ~ndimage.binary_dilation(mask, iterations=AIR_MARGIN) & (image != 0)
  s = haar_sigma(image, air)
  return None if s is None or s <= 0 else s / AIR_STD_OVER_SIGMA


def input_sigma(image: np.ndarray, mask: np.ndarray) -> float:
  """The input's noise σ as restore uses it (the SURE blend and the noise clamp): the smaller of
  the foreground's `robust_sigma` and the air's `air_sigma` (when there is usable air).

  In tissue, fine anatomy reads as noise to any local estimator: on small or textured real scans
  (dipy's 58² aniso_vox, 64² EPI) `robust_sigma` was 1.3–5× the noise actually added (3–5× on
  aniso_vox), and the blend then kept the network's blur as if it were denoising. The air holds
  noise only, but may be missing (masked images), small, or hold ghosts and anatomy, which only
  raise its estimate. Where the noise itself varies over the image (parallel imaging's g-factor,
  highest in the middle), the air reads the lower edge level and the smaller estimate is too low:
  the blend then keeps less of the network's change and the clamp is tighter, so restore removes
  less noise than it could — the safe direction, never invented structure."""
  fg = robust_sigma(image, mask)
  air = air_sigma(image, mask)
  return fg if air is None else min(fg, air)


# The noise floor of a magnitude image. A root-sum-of-squares combination of L coils, each with
# complex Gaussian noise of σ per real channel, gives M = σ·χ′ with 2L degrees of freedom and
# non-centrality A/σ (A the noise-free magnitude): E[M] = σ √2 Γ(L + ½)/Γ(L) ₁F₁(−½; L; −A²/2σ²),
# which is A + (2L − 1)σ²/2A in bright tissue but √2 Γ(L + ½)/Γ(L) σ in the air (1.25σ for one
# coil, 8.0σ for 32). A denoiser's output estimates E[M], so its dark tissue and air keep that
# floor: lesion contrast and dark anatomy compressed, the air grey (`unbias` maps it back to A).
# `noise_floor` reads (L, σ) from the darkest air: the voxels outside the foreground grown by
# AIR_MARGIN, not exactly zero, whose 7×7 local mean is in the lowest FLOOR_DARK_PERCENTILE %
# (where anatomy outside Otsu's mask is least likely). There the median ÷ the Haar σ fixes L (the
# χ median over its std: 1.8 for one coil, 11.3 for 32), and the Haar σ ÷ the χ std then gives σ.
# It is trusted only when (a) at least FLOOR_MIN_AIR voxels qualify, (b) their spread (IQR/1.349) is
# within FLOOR_MAX_SPREAD × the Haar σ (one population, not air and anatomy), (c) L ≤ FLOOR_MAX_COILS,
# (d) their Haar σ is below FLOOR_MAX_AIR_OVER_TISSUE × the tissue's (a floor's std is 0.66–0.71σ;
# dim tissue's is σ), the tissue's σ read inside Otsu's mask eroded by FLOOR_TISSUE_EROSION voxels, so
# that the object's edge does not inflate it. Otherwise L = 1 (every magnitude image has at least the
# Rician floor) with the σ the caller gives. Check (d) is what keeps a scan with no air from losing
# its dim tissue to a floor read from it: on 115 images of a bright disc in smooth dim tissue at
# 6–30σ (1, 4 or 8 coils, no air; scratch `/work/s13/ratio.py`) that pass (a) and (b), the ratio of
# (d) was ≥ 0.84 with the eroded mask, and with the whole mask as low as 0.78, ≤ 0.85 on 1 in 10;
# on the 108 validation slices whose air passes (a) and (b) it is 0.59 at the median and 0.77 at
# the 95th percentile (the ones above 0.8 fall back either way). Fine texture over all the tissue
# (≈ 20 % of its mean at a 1-px scale) inflates the tissue's σ and can still pass; no validation
# image has it. On the faithfulness slices of the synthetic test (48, coils 1–32 known), 36 were
# read from the air, with L within 25 % and σ within 10 % of the truth; the other 12 fell back.
FLOOR_DARK_PERCENTILE = 30
FLOOR_MIN_AIR = 800
FLOOR_MAX_SPREAD = 1.25
FLOOR_MAX_COILS = 64
FLOOR_MAX_AIR_OVER_TISSUE = 0.8
FLOOR_TISSUE_EROSION = 2


@functools.lru_cache(maxsize=1)
def _chi_table():
  """(L grid, median, std) of the standard χ with 2L degrees of freedom, L in [1, FLOOR_MAX_COILS]
  (χ²/2 is Gamma(L): the median is √(2 · its median); the std is `chi_std`)."""
  from scipy import special

  coils = np.exp(np.linspace(0.0, np.log(FLOOR_MAX_COILS), 300))
  return coils, np.sqrt(2.0 * special.gammaincinv(coils, 0.5)), chi_std(coils)


FLOOR_TABLE_MAX = 40.0  # `chi_mean` is exact up to a = 40 (σ units), its expansion beyond


def noise_floor(image: np.ndarray, mask: np.ndarray, sigma: float) -> tuple[float, float, bool]:
  """(L, σ, from_air) of a 2-D magnitude slice's noise: L coils' root sum of squares (non-integer:
  an effective count), σ per real channel; `from_air` False when the air could not be trusted and
  (1, `sigma`) is returned (see the notes above `FLOOR_DARK_PERCENTILE`)."""
  x = np.asarray(image, np.float64)
  air = ~ndimage.binary_dilation(mask, iterations=AIR_MARGIN) & (x != 0)
  if air.sum() < FLOOR_MIN_AIR:
    return 1.0, float(sigma), False
  local = ndimage.uniform_filter(x, 7)
  air &= local <= np.percentile(local[air], FLOOR_DARK_PERCENTILE)
  s_air = haar_sigma(x, air)
  if not s_air or air.sum() < FLOOR_MIN_AIR // 4:
    return 1.0, float(sigma), False
  q1, median, q3 = np.percentile(x[air], [25, 50, 75])
  inner = ndimage.binary_erosion(mask, iterations=FLOOR_TISSUE_EROSION)  # the object's edge inflates σ
  tissue_sigma = robust_sigma(x, inner if inner.sum() >= FLOOR_MIN_AIR else mask)
  if (q3 - q1) / 1.349 > FLOOR_MAX_SPREAD * s_air or s_air > FLOOR_MAX_AIR_OVER_TISSUE * tissue_sigma:
    return 1.0, float(sigma), False
  coils, med, std = _chi_table()
  ratio = med / std
  if median / s_air > ratio[-1]:
    return 1.0, float(sigma), False
  n = float(np.interp(median / s_air, ratio, coils))  # below one coil's ratio: 1
  return n, s_air / float(np.interp(n, coils, std)), True


def chi_mean(a: np.ndarray, coils: float) -> np.ndarray:
  """E[M]/σ of the magnitude M of `coils` coils' root sum of squares at noise-free magnitude a·σ
  (the non-central χ mean; for a > FLOOR_TABLE_MAX its expansion √(a² + 2L − 1), within 10⁻³)."""
  from scipy import special

  a = np.asarray(a, np.float64)
  low = np.minimum(a, FLOOR_TABLE_MAX)
  exact = np.sqrt(2.0) * np.exp(special.gammaln(coils + 0.5) - special.gammaln(coils)) \
      * special.hyp1f1(-0.5, coils, -low ** 2 / 2.0)
  return np.where(a > FLOOR_TABLE_MAX, np.sqrt(a ** 2 + 2.0 * coils - 1.0), exact)


def chi_std(coils):
  """The std / σ of the magnitude of `coils` coils' root sum of squares in the air (noise-free
  magnitude 0): √(2L − E[M]²/σ²), 0.655 for one coil, 0.707 for many (`coils` a number or an array)."""
  coils = np.asarray(coils, np.float64)
  return np.sqrt(2.0 * coils - chi_mean(np.zeros_like(coils), coils) ** 2)


def unbias(m: np.ndarray, coils: float) -> np.ndarray:
  """The noise-free magnitude a ≥ 0 (in units of σ) whose expected magnitude `chi_mean(a, coils)` is
  m: 0 at or below the air's floor, m − (2L − 1)/2m in bright tissue."""
  m = np.asarray(m, np.float64)
  grid = np.linspace(0.0, FLOOR_TABLE_MAX, 4001)
  table = chi_mean(grid, coils)
  return np.where(m > table[-1], np.sqrt(np.maximum(m ** 2 - (2.0 * coils - 1.0), 0.0)),
                  np.interp(m, table, grid, left=0.0))


@dataclasses.dataclass
class SliceConsistency:
  """Scores of one slice (see the module docstring) and its residual map r / σ̂."""

  energy: float
  structure: float
  sigma: float
  residual: np.ndarray


@functools.lru_cache(maxsize=4)
def _poly_basis(shape: tuple[int, int], order: int) -> np.ndarray:
  """(X, Y, P) monomials xⁱyʲ, i + j ≤ order, on [-1, 1]² (read-only; one per slice shape, reused
  across a volume's slices: rebuilding it took 16 ms of a 197×233 slice's check)."""
  xs = [np.linspace(-1.0, 1.0, n) for n in shape]
  grid = np.meshgrid(*xs, indexing="ij")
  powers = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
  basis = np.stack([grid[0] ** i * grid[1] ** j for i, j in powers], axis=-1)
  basis.flags.writeable = False
  return basis


def smooth_field(inp: np.ndarray, out: np.ndarray, mask: np.ndarray, order: int = 4) -> np.ndarray:
  """exp of the order-`order` polynomial (in normalised coordinates) fitted by least squares to
  log(inp / out) on the mask's voxels where both are well above zero; 1 where it cannot be fitted."""
  basis = _poly_basis(tuple(inp.shape), order)  # (X, Y, P)
  level = 0.2 * float(out[mask].max()) if mask.any() else 0.0
  fit = mask & (out > level) & (inp > 0)
  if fit.sum() < 4 * basis.shape[-1]:
    return np.ones_like(inp)
  w = out[fit]  # brighter voxels have a better-determined ratio
  coef, *_ = np.linalg.lstsq(basis[fit] * w[:, None], np.log(inp[fit] / out[fit]) * w, rcond=None)
  return np.exp(np.clip(basis @ coef, -5.0, 5.0))


def slice_consistency(inp: np.ndarray, restored: np.ndarray, mask: np.ndarray, *, field: np.ndarray | None = None,
                      field_order: int = 4, structure_px: float = 2.0) -> SliceConsistency:
  """Consistency of one 2-D slice `restored` with its input `inp` inside `mask`. `field`: the bias
  field the restorer estimated (its N4 field), if any: the fitted field is then that field times
  the order-`field_order` polynomial that maps restored × field onto the input (the restorer's
  scale and what the polynomial can add), else the polynomial alone."""
  inp = inp.astype(np.float64)
  out = restored.astype(np.float64)
  m = mask.astype(np.float64)
  if field is None:
    field = smooth_field(inp, out, mask, field_order)
  else:
    field = np.asarray(field, np.float64)
    field = field * smooth_field(inp, out * field, mask, field_order)
  r = (inp - field * out) * m
  sigma = max(input_sigma(inp, mask), 1e-12 * max(float(np.abs(inp).max()), 1e-30))
  n = max(float(m.sum()), 1.0)
  energy = float((r ** 2).sum() / n) / sigma ** 2
  smooth = ndimage.gaussian_filter(r, structure_px)
  white = sigma ** 2 / (4.0 * np.pi * structure_px ** 2)  # variance white noise keeps after the low-pass
  structure = float((smooth ** 2 * m).sum() / n) / white
  return SliceConsistency(energy, structure, sigma, (r / sigma).astype(np.float32))


def consistency(inputs: np.ndarray, restored: np.ndarray, masks: np.ndarray, *, fields: np.ndarray | None = None,
                warn_structure: float = 3.0, **kwargs) -> dict:
  """Scores of a stack of (N, X, Y) slices: per-slice lists, the flagged slices and the residual maps.
  `fields`: the restorer's (N, X, Y) bias field, if it estimated one (`slice_consistency`).

  Slices with fewer than 64 foreground voxels are skipped (scores NaN, residual 0).
  """
  energy, structure, flagged = [], [], []
  maps = np.zeros(restored.shape, np.float32)
  for i, (x, y, m) in enumerate(zip(inputs, restored, masks)):
    if m.sum() < 64:
      energy.append(float("nan"))
      structure.append(float("nan"))
      continue
    c = slice_consistency(x, y, m, field=None if fields is None else fields[i], **kwargs)
    energy.append(c.energy)
    structure.append(c.structure)
    maps[i] = c.residual
    if c.structure > warn_structure:
      flagged.append(i)
  return {"energy": energy, "structure": structure, "flagged": flagged, "residual": maps,
          "warn_structure": warn_structure}
