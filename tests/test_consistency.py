"""The physics consistency check: a noise-only residual scores ≈ 1, erased or invented anatomy and
blurring score far above the warning threshold, and the noise σ estimate is right."""

import numpy as np
import pytest
from scipy import ndimage

from mri_jax import consistency as C
from mri_jax.data import pairs


@pytest.fixture(scope="module")
def brain():
  t = pairs.template_tissues(2)
  clean = np.tensordot(np.array([0.3, 0.6, 1.0], np.float32), t, axes=1)[..., 45].astype(np.float32)
  x, y = np.meshgrid(np.linspace(-1, 1, clean.shape[0]), np.linspace(-1, 1, clean.shape[1]), indexing="ij")
  field = np.exp(0.3 * x - 0.2 * y + 0.2 * x * y - 0.15 * x ** 2)
  return clean, clean > 0.1, field


def _noisy(image, sigma, seed):
  rng = np.random.default_rng(seed)
  return np.abs(image + sigma * (rng.standard_normal(image.shape) + 1j * rng.standard_normal(image.shape)))


def test_noise_sigma_of_white_noise_on_a_smooth_image():
  rng = np.random.default_rng(0)
  x = np.linspace(0, 1, 96)
  smooth = np.add.outer(x, x) + 1.0
  for sigma in (0.01, 0.05):
    assert C.noise_sigma(smooth + sigma * rng.standard_normal(smooth.shape)) == pytest.approx(sigma, rel=0.05)


def test_noise_only_residual_passes_and_changed_anatomy_is_flagged(brain):
  clean, mask, field = brain
  sigma = 0.03
  ok = C.slice_consistency(_noisy(clean * field, sigma, 1), clean, mask)
  assert 0.6 < ok.energy < 1.2 and ok.structure < 1.5  # the bias field is explained, the rest is noise
  lesioned = clean.copy()
  lesioned[40:46, 50:56] *= 1.5
  erased = C.slice_consistency(_noisy(lesioned * field, sigma, 2), clean, mask)
  invented = C.slice_consistency(_noisy(clean * field, sigma, 3), lesioned, mask)
  blurred = C.slice_consistency(_noisy(clean * field, sigma, 4), ndimage.gaussian_filter(clean, 1.0), mask)
  warn = C.consistency.__kwdefaults__["warn_structure"]
  for bad in (erased, invented, blurred):
    assert bad.structure > warn > ok.structure
  stack = C.consistency(np.stack([_noisy(clean * field, sigma, 5), _noisy(lesioned * field, sigma, 6)]),
                        np.stack([clean, clean]), np.stack([mask, mask]))
  assert stack["flagged"] == [1] and stack["residual"].shape == (2, *clean.shape)
  # the residual map is in units of σ: its std over the foreground of the good slice is about 1
  assert 0.7 < stack["residual"][0][mask].std() < 1.2


def test_the_restorers_own_field_explains_a_coil_hotspot_that_a_polynomial_cannot(brain):
  """A surface coil's hotspot is no order-4 polynomial: fitted alone, the polynomial leaves
  structure and flags a faithful output. Given the field the restorer estimated (here the true one
  times a smooth error no low-order polynomial fits exactly, as N4's B-spline field would be), the faithful output passes, and an erased lesion
  is still flagged."""
  clean, mask, _ = brain
  x, y = np.meshgrid(np.linspace(-1, 1, clean.shape[0]), np.linspace(-1, 1, clean.shape[1]), indexing="ij")
  hotspot = np.exp(1.2 * np.exp(-((x - 0.75) ** 2 + (y + 0.2) ** 2) / 0.04))
  estimate = hotspot * 1.3 * np.exp(0.1 * x + 0.05 * np.sin(2.5 * x) * np.cos(2.0 * y))  # off by a smooth factor
  sigma = 0.03
  inp = _noisy(clean * hotspot, sigma, 7)
  warn = C.consistency.__kwdefaults__["warn_structure"]
  assert C.slice_consistency(inp, clean, mask).structure > warn  # the polynomial alone: a false alarm
  ok = C.slice_consistency(inp, clean, mask, field=estimate)
  assert ok.structure < 1.5 and 0.6 < ok.energy < 1.2
  lesioned = clean.copy()
  lesioned[40:46, 50:56] *= 1.5
  erased = C.slice_consistency(_noisy(lesioned * hotspot, sigma, 8), clean, mask, field=estimate)
  assert erased.structure > warn
  stack = C.consistency(np.stack([inp, _noisy(lesioned * hotspot, sigma, 8)]), np.stack([clean, clean]),
                        np.stack([mask, mask]), fields=np.stack([estimate, estimate]))
  assert stack["flagged"] == [1]

def test_input_sigma_reads_the_noise_in_the_air_of_a_textured_scan():
  """Fine texture inflates any in-tissue estimate; the air of a magnitude image (Rayleigh for one
  coil, χ for a root sum of squares over 8) gives σ back within 10 %; padding (exact zeros) and a
  masked image fall back to the tissue estimate; the result is never above the tissue estimate."""
  rng = np.random.default_rng(3)
  n = 128
  yy, xx = np.mgrid[:n, :n]
  disc = (yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (0.3 * n) ** 2
  texture = np.where(disc, 1.0 + 0.25 * np.sign(np.sin(1.9 * xx) * np.sin(2.3 * yy)), 0.0)  # 1-px checks
  sigma = 0.03
  for coils in (1, 8):
    channels = [texture / np.sqrt(coils) + sigma * (rng.standard_normal(texture.shape)
                                                     + 1j * rng.standard_normal(texture.shape)) for _ in range(coils)]
    image = np.sqrt(sum(np.abs(c) ** 2 for c in channels))
    tissue = C.robust_sigma(image, disc)
    assert tissue > 2 * sigma  # the texture reads as noise in the tissue
    assert C.air_sigma(image, disc) == pytest.approx(sigma, rel=0.1)
    assert C.input_sigma(image, disc) == pytest.approx(sigma, rel=0.1)
    padded = np.pad(image, 40)  # zero padding is not air: same estimate
    assert C.air_sigma(padded, np.pad(disc, 40)) == pytest.approx(C.air_sigma(image, disc), rel=0.02)
    masked = np.where(ndimage.binary_dilation(disc, iterations=2), image, 0.0)  # air zeroed
    assert C.air_sigma(masked, disc) is None
    assert C.input_sigma(masked, disc) == tissue
  # ghosts or anatomy in the air only raise its estimate: the tissue's is the ceiling
  ghost = image + np.where(disc, 0.0, 0.3 * (-1.0) ** (xx + yy))  # pixel-scale structure in the air
  assert C.air_sigma(ghost, disc) > C.robust_sigma(ghost, disc)
  assert C.input_sigma(ghost, disc) == C.robust_sigma(ghost, disc)
