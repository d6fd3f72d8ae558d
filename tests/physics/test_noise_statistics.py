"""Noise statistics against closed forms: Rician (1 coil) and noncentral-χ (RSS of N coils).

Tolerance: 1% relative on mean and variance. With 2^21 samples the standard error of the sample
mean is < 0.05% and of the sample variance < 0.2% of their values at every SNR used, so 1% is at
least five standard errors: a real mismatch of the model (e.g. σ convention off by √2, a wrong
number of degrees of freedom, noise added to one quadrature only) fails by far more.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from mri_jax import physics

N_SAMPLES = 2**21


def noncentral_chi_moments(nu: float, sigma: float, n_coils: int) -> tuple[float, float]:
  """Mean and variance of the RSS magnitude of n_coils complex Gaussians (2N degrees of freedom)."""
  x = -(nu**2) / (2 * sigma**2)
  mean = sigma * np.sqrt(2) * np.exp(special.gammaln(n_coils + 0.5) - special.gammaln(n_coils)) \
      * special.hyp1f1(-0.5, n_coils, x)
  second = 2 * n_coils * sigma**2 + nu**2
  return mean, second - mean**2


def test_closed_form_reduces_to_rician_and_rayleigh():
  # Rayleigh (ν = 0, one coil): mean σ√(π/2), variance (4 − π)σ²/2.
  mean, var = noncentral_chi_moments(0.0, 2.0, 1)
  np.testing.assert_allclose([mean, var], [2.0 * np.sqrt(np.pi / 2), (4 - np.pi) / 2 * 4.0], rtol=1e-12)


def _magnitude_samples(nu, sigma, n_coils, combine="rss", covariance=None, domain="image", seed=0):
  # Constant maps s_c = 1/√N (‖s‖ = 1): each coil sees ν/√N, the combined signal is ν.
  maps = jnp.full((n_coils, N_SAMPLES), 1 / np.sqrt(n_coils), jnp.complex64)
  if domain == "kspace":
    maps = maps.reshape(n_coils, 1024, 2048)
  noisy = physics.add_noise(jax.random.key(seed), maps * nu, sigma, covariance, domain)
  if combine == "rss":
    return np.asarray(physics.rss(noisy)).ravel()
  return np.asarray(jnp.abs(physics.roemer(noisy, maps, covariance))).ravel()


@pytest.mark.parametrize("snr", [0.0, 0.5, 1.0, 2.0, 5.0])
def test_single_coil_is_rician(snr):
  sigma = 0.1
  m = _magnitude_samples(snr * sigma, sigma, 1)
  mean, var = noncentral_chi_moments(snr * sigma, sigma, 1)
  np.testing.assert_allclose(m.mean(), mean, rtol=0.01)
  np.testing.assert_allclose(m.var(), var, rtol=0.01)


@pytest.mark.parametrize("n_coils", [2, 8, 32])
@pytest.mark.parametrize("snr", [0.0, 1.0, 4.0])
def test_rss_is_noncentral_chi(n_coils, snr):
  sigma = 0.05
  m = _magnitude_samples(snr * sigma, sigma, n_coils, seed=n_coils)
  mean, var = noncentral_chi_moments(snr * sigma, sigma, n_coils)
  np.testing.assert_allclose(m.mean(), mean, rtol=0.01)
  np.testing.assert_allclose(m.var(), var, rtol=0.01)


def test_kspace_noise_has_the_image_space_distribution():
  sigma, nu, n = 0.05, 0.1, 4
  m = _magnitude_samples(nu, sigma, n, domain="kspace", seed=7)
  mean, var = noncentral_chi_moments(nu, sigma, n)
  np.testing.assert_allclose(m.mean(), mean, rtol=0.01)
  np.testing.assert_allclose(m.var(), var, rtol=0.01)


def test_correlated_noise_has_the_requested_covariance():
  params = physics.make_params(8, noise_correlation=0.6)
  psi = np.asarray(physics.coil_covariance(params))
  assert np.allclose(np.diag(psi), 1.0) and np.all(np.linalg.eigvalsh(psi) > 0)
  assert psi[0, 1] > 0.2  # neighbouring loops really are correlated
  sigma = 0.3
  n = np.asarray(physics.complex_noise(jax.random.key(1), (8, 2**18), sigma, jnp.asarray(psi)))
  empirical = (n @ n.conj().T) / n.shape[1]
  # Each entry is a mean of 2^18 products: standard error ≈ 2σ²/√(2^18) = 0.2% of 2σ².
  np.testing.assert_allclose(empirical, 2 * sigma**2 * psi, atol=0.02 * 2 * sigma**2)


def test_roemer_with_correlated_noise_is_rician_with_unit_noise_gain():
  params = physics.make_params(8, noise_correlation=0.5)
  psi = physics.coil_covariance(params)
  sigma, nu = 0.1, 0.15
  m = _magnitude_samples(nu, sigma, 8, combine="roemer", covariance=psi, seed=3)
  # Constant maps s = 1/√8 · 1, so the Roemer signal is ν·sqrt(sᴴΨ⁻¹s).
  s = np.full(8, 1 / np.sqrt(8))
  nu_eff = nu * np.sqrt(s @ np.linalg.solve(np.asarray(psi, np.float64), s))
  mean, var = noncentral_chi_moments(nu_eff, sigma, 1)
  np.testing.assert_allclose(m.mean(), mean, rtol=0.01)
  np.testing.assert_allclose(m.var(), var, rtol=0.01)


def test_simulate_end_to_end_matches_noncentral_chi_per_voxel():
  """Through `simulate` itself: coil maps of varying ‖s‖, no other field, many noise draws."""
  params = physics.make_params(4, noise_sigma=0.2, b1_amplitude=0.0)
  clean = jnp.ones((32, 32))
  keys = jax.random.split(jax.random.key(5), 2048)
  images = jax.jit(jax.vmap(lambda k: physics.simulate(k, clean, params).image))(keys)
  receive = np.asarray(physics.simulate(keys[0], clean, params).receive)
  sigma = 0.2
  expected = np.vectorize(lambda nu: noncentral_chi_moments(nu, sigma, 4)[0])(receive)
  # Per voxel 2048 draws (standard error ≤ 1.5%); averaged over 1024 voxels the mean error must be < 0.3%.
  rel = np.asarray(images).mean(0) / expected - 1
  assert abs(rel.mean()) < 0.003
  assert np.abs(rel).max() < 0.08


def test_table_normals_match_the_standard_normal():
  """The 16-bit quantile table behind every noise draw (see mri_jax.physics.noise)."""
  table = physics.noise.normal_table().astype(np.float64)
  assert abs(table.mean()) < 1e-7
  assert abs(table.var() - 1) < 2e-6
  assert abs((table**4).mean() - 3) < 1e-3  # Gaussian kurtosis
  assert 4.38 < table.max() < 4.40 and np.all(np.diff(table) > 0)
  # Draws: two per 32-bit word, real and imaginary parts independent, KS distance to N(0, 1)
  # within sampling error (2^21 draws: 5% critical value 0.00094) plus the 2^-16 quantisation.
  key_data = physics.noise.coil_keys(jax.random.key(3), 1)[0]
  re, im = (np.asarray(x).ravel() for x in physics.noise.coil_standard_noise(key_data, (1024, 1024)))
  z = np.sort(np.concatenate([re, im]))
  ks = np.abs(special.ndtr(z) - (np.arange(z.size) + 0.5) / z.size).max()
  assert ks < 0.0012
  assert abs(np.corrcoef(re, im)[0, 1]) < 0.005


@pytest.mark.parametrize("combine", ["rss", "roemer"])
def test_fused_chain_equals_all_coils_at_once(combine):
  """`simulate` combines coils one at a time (fast path); the explicit all-coil route (k-space
  noise and correlated RSS use it) gives the same image and receive field for the same draws."""
  from mri_jax.physics import coils
  from mri_jax.physics.simulate import _fused_chain, _materialised_chain

  shape = (40, 36, 20)
  params = physics.make_params(4, combine=combine, coarse_size=8, noise_sigma=0.05,
                               noise_correlation=0.3 if combine == "roemer" else 0.0,
                               coil_jitter=np.array([[0.1, 0.0], [0.0, 0.05], [-0.1, 0.0], [0.0, 0.0]]))
  signal = _uniform_signal(shape)
  coarse = coils.coarse_coil_maps(shape, params)
  cov = physics.coil_covariance(params)
  key, sigma = jax.random.key(9), 0.05 * jnp.max(signal)
  fused = _fused_chain(key, coarse, signal, sigma, cov if combine == "roemer" else None, combine)
  explicit = _materialised_chain(key, coarse, signal, sigma, cov, params)
  for a, b in zip(fused, explicit):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
  out = physics.simulate(key, signal, params.replace(b1_amplitude=jnp.float32(0.0)))
  np.testing.assert_allclose(np.asarray(out.image), np.asarray(fused[0]), rtol=2e-5, atol=2e-6)


def _uniform_signal(shape):
  return jnp.asarray(np.random.default_rng(1).uniform(0.2, 1.0, shape), jnp.float32)
