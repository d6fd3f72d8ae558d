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
