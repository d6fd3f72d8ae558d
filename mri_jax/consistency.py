"""Physics consistency of a restoration: is the input explained by restored × field + noise?

A restorer should remove noise and the bias field and nothing else. The acquisition model is

    input ≈ restored · field + noise,   field smooth, noise white with the input's σ,

so after restoring, the residual r = input − f̂ · restored (f̂: the smooth field that best maps the
restored image onto the input — a least-squares polynomial of order `field_order` fitted to
log(input / restored) on the foreground's well-lit voxels) should look like the input's noise:
same energy, no structure. Per slice this module reports

- `energy`: mean(r²) / σ̂² inside the foreground, σ̂ estimated from the *input* alone (Immerkær's
  Laplacian-difference estimator, robust to smooth fields): ≈ 1 when the output departs from the
  input by noise only; < 1 when the restorer kept some noise; ≫ 1 when it changed the image;
- `structure`: the residual's energy after a Gaussian low-pass (σ = `structure_px`), relative to
  what white noise of σ̂ leaves after the same low-pass (a factor 1/(4π σ_px²)): ≈ 1 for a
  noise-like residual, ≫ 1 where the residual has shape — anatomy erased from or invented in the
  output. Slices whose `structure` exceeds `warn_structure` are flagged.

`residual_map` is r / σ̂ (the map written by `restore --save-residual`). Rician statistics make
r slightly non-zero-mean in dark regions; the scores are meant for comparison against the
thresholds (calibrated on the real-scan validation set), not as exact χ² statistics.
"""

from __future__ import annotations

import dataclasses

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


@dataclasses.dataclass
class SliceConsistency:
  """Scores of one slice (see the module docstring) and its residual map r / σ̂."""

  energy: float
  structure: float
  sigma: float
  residual: np.ndarray


def smooth_field(inp: np.ndarray, out: np.ndarray, mask: np.ndarray, order: int = 4) -> np.ndarray:
  """exp of the order-`order` polynomial (in normalised coordinates) fitted by least squares to
  log(inp / out) on the mask's voxels where both are well above zero; 1 where it cannot be fitted."""
  xs = [np.linspace(-1.0, 1.0, n) for n in inp.shape]
  grid = np.meshgrid(*xs, indexing="ij")
  powers = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
  basis = np.stack([grid[0] ** i * grid[1] ** j for i, j in powers], axis=-1)  # (X, Y, P)
  level = 0.2 * float(out[mask].max()) if mask.any() else 0.0
  fit = mask & (out > level) & (inp > 0)
  if fit.sum() < 4 * len(powers):
    return np.ones_like(inp)
  w = out[fit]  # brighter voxels have a better-determined ratio
  coef, *_ = np.linalg.lstsq(basis[fit] * w[:, None], np.log(inp[fit] / out[fit]) * w, rcond=None)
  return np.exp(np.clip(basis @ coef, -5.0, 5.0))


def slice_consistency(inp: np.ndarray, restored: np.ndarray, mask: np.ndarray, *, field_order: int = 4,
                      structure_px: float = 2.0) -> SliceConsistency:
  """Consistency of one 2-D slice `restored` with its input `inp` inside `mask`."""
  inp = inp.astype(np.float64)
  out = restored.astype(np.float64)
  m = mask.astype(np.float64)
  field = smooth_field(inp, out, mask, field_order)
  r = (inp - field * out) * m
  sigma = max(noise_sigma(inp, mask), 1e-12 * max(float(np.abs(inp).max()), 1e-30))
  n = max(float(m.sum()), 1.0)
  energy = float((r ** 2).sum() / n) / sigma ** 2
  smooth = ndimage.gaussian_filter(r, structure_px)
  white = sigma ** 2 / (4.0 * np.pi * structure_px ** 2)  # variance white noise keeps after the low-pass
  structure = float((smooth ** 2 * m).sum() / n) / white
  return SliceConsistency(energy, structure, sigma, (r / sigma).astype(np.float32))


def consistency(inputs: np.ndarray, restored: np.ndarray, masks: np.ndarray, *, warn_structure: float = 3.0,
                **kwargs) -> dict:
  """Scores of a stack of (N, X, Y) slices: per-slice lists, the flagged slices and the residual maps.

  Slices with fewer than 64 foreground voxels are skipped (scores NaN, residual 0).
  """
  energy, structure, flagged = [], [], []
  maps = np.zeros(restored.shape, np.float32)
  for i, (x, y, m) in enumerate(zip(inputs, restored, masks)):
    if m.sum() < 64:
      energy.append(float("nan"))
      structure.append(float("nan"))
      continue
    c = slice_consistency(x, y, m, **kwargs)
    energy.append(c.energy)
    structure.append(c.structure)
    maps[i] = c.residual
    if c.structure > warn_structure:
      flagged.append(i)
  return {"energy": energy, "structure": structure, "flagged": flagged, "residual": maps,
          "warn_structure": warn_structure}
