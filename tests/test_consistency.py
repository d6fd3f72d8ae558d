"""The physics consistency check: a noise-only residual scores ≈ 1, erased or invented anatomy and
blurring score far above the warning threshold, and the noise σ estimate is right."""

import numpy as np
import pytest
from scipy import ndimage

from mri_jax import consistency as C
from mri_jax.n4 import otsu_mask
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


def _rss(image, sigma, coils, rng):
  """Root sum of squares of `coils` coils of equal sensitivity (their RSS is `image`), noise σ each."""
  return np.sqrt(sum(np.abs(image / np.sqrt(coils) + sigma * (rng.standard_normal(image.shape)
                                                               + 1j * rng.standard_normal(image.shape))) ** 2
                     for _ in range(coils)))


def test_the_noise_floor_model_matches_root_sum_of_squares_and_inverts():
  """`chi_mean` is the mean magnitude of L coils' root sum of squares (Monte Carlo, 200,000 draws,
  in the air and in tissue, across the table's edge); `unbias` inverts it, and maps the floor to 0."""
  rng = np.random.default_rng(0)
  for coils, a in ((1, 0.0), (1, 2.0), (8, 3.0), (32, 0.0), (32, 10.0), (4, 45.0)):
    m = _rss(np.full(200_000, a), 1.0, coils, rng)
    assert C.chi_mean(a, coils) == pytest.approx(m.mean(), rel=2e-3)
    assert float(C.unbias(C.chi_mean(a, coils), coils)) == pytest.approx(a, abs=1e-3)
  assert C.chi_mean(0.0, 1) == pytest.approx(np.sqrt(np.pi / 2))
  assert float(C.unbias(0.5 * C.chi_mean(0.0, 8), 8)) == 0.0  # below the floor: no signal
  big = np.array([50.0, 200.0])
  np.testing.assert_allclose(C.unbias(C.chi_mean(big, 16), 16), big, rtol=1e-6)


def test_noise_floor_is_read_from_the_air_and_falls_back_when_the_air_is_not_pure_noise():
  """The coil count and σ of a root-sum-of-squares image come back from its air (L within 25 %, σ
  within 10 %), also when dim anatomy outside Otsu's mask covers most of it (the darkest air is
  read); a masked image (no air) and dim anatomy everywhere outside the mask (no air at all) fall
  back to one coil and the σ given."""
  rng = np.random.default_rng(5)
  n = 128
  yy, xx = np.mgrid[:n, :n]
  r2 = (yy - n / 2) ** 2 + (xx - n / 2) ** 2
  disc = r2 < (0.3 * n) ** 2
  clean = np.where(disc, 1.0 + 0.2 * np.sin(xx / 5.0), 0.0)
  sigma = 0.02
  for coils in (1, 8, 32):
    image = _rss(clean, sigma, coils, rng)
    got_coils, got_sigma, from_air = C.noise_floor(image, disc, 0.5)
    assert from_air and got_coils == pytest.approx(coils, rel=0.25) and got_sigma == pytest.approx(sigma, rel=0.1)
  masked = np.where(ndimage.binary_dilation(disc, iterations=2), image, 0.0)
  assert C.noise_floor(masked, disc, 0.5) == (1.0, 0.5, False)
  dim = 0.25 + 0.1 * np.sin(xx / 3.0) * np.sin(yy / 4.0)  # anatomy below Otsu's threshold
  ring = (r2 >= (0.3 * n) ** 2) & (r2 < (0.49 * n) ** 2)  # all round: only the corners are air
  got_coils, got_sigma, from_air = C.noise_floor(_rss(np.where(ring, dim, clean), sigma, 8, rng), disc, 0.5)
  assert from_air and got_coils == pytest.approx(8, rel=0.25) and got_sigma == pytest.approx(sigma, rel=0.1)
  assert C.noise_floor(_rss(np.where(disc, clean, dim), sigma, 8, rng), disc, 0.5) == (1.0, 0.5, False)
  # No air at all: a bright object in smooth dim tissue (6–30σ, 1–8 coils). Read as a floor, that
  # tissue would be erased; the tissue's σ inside the eroded mask keeps check (d) from passing it.
  read = []
  for _ in range(24):
    radius, level, coils = rng.uniform(0.25, 0.45), rng.uniform(6, 30) * sigma, int(rng.choice([1, 4, 8]))
    image = _rss(np.where(r2 < (radius * n) ** 2, 1.0, level), sigma, coils, rng)
    read.append(C.noise_floor(image, np.asarray(otsu_mask(image)), 0.5)[2])
  assert not any(read)


def test_chi_std_is_the_floors_spread():
  """`chi_std` is the std of L coils' root sum of squares in the air (Monte Carlo) and matches the
  χ table's."""
  rng = np.random.default_rng(1)
  for coils in (1, 4, 32):
    m = _rss(np.zeros(200_000), 1.0, coils, rng)
    assert C.chi_std(coils) == pytest.approx(m.std(), rel=5e-3)
  table_coils, _, table_std = C._chi_table()
  assert C.chi_std(8) == pytest.approx(float(np.interp(8, table_coils, table_std)), rel=1e-4)


def test_smooth_field_recovers_a_polynomial_field_with_the_cached_basis():
  # log(inp / out) an order-2 polynomial: the order-4 fit recovers it on every voxel, also on
  # the second call, which reuses the cached (read-only) basis for that shape
  rng = np.random.default_rng(0)
  out = 1.0 + rng.random((40, 52))
  u, v = np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 52), indexing="ij")
  field = np.exp(0.3 * u - 0.2 * v ** 2 + 0.1 * u * v)
  mask = np.ones(out.shape, bool)
  for _ in range(2):
    np.testing.assert_allclose(C.smooth_field(out * field, out, mask), field, rtol=1e-6)
  basis = C._poly_basis((40, 52), 4)
  assert basis.shape == (40, 52, 15) and not basis.flags.writeable
  assert C._poly_basis((40, 52), 4) is basis
