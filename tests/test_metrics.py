"""Masked SSIM / PSNR: identities, a closed-form PSNR, scale invariance, monotonic in noise."""

import jax
import jax.numpy as jnp
import numpy as np

from mri_jax import metrics


def test_identities_and_closed_form():
  x = jax.random.uniform(jax.random.key(0), (40, 40))
  m = jnp.ones((40, 40), bool)
  np.testing.assert_allclose(float(metrics.ssim(x, x, m)), 1.0, atol=1e-6)
  np.testing.assert_allclose(float(metrics.psnr(x + 0.1, x, m, 1.0)), 20.0, atol=1e-4)


def test_scores_ignore_global_scale_and_fall_with_noise():
  x = jax.random.uniform(jax.random.key(1), (48, 48)) + 0.5
  m = jnp.zeros((48, 48), bool).at[8:40, 8:40].set(True)
  noisy = [x + s * jax.random.normal(jax.random.key(2), x.shape) for s in (0.05, 0.1, 0.2)]
  a = metrics.masked_scores(noisy[0], x, m)
  b = metrics.masked_scores(3.0 * noisy[0], x, m)  # per-image foreground-mean normalisation
  np.testing.assert_allclose(float(a["ssim"]), float(b["ssim"]), rtol=1e-5)
  np.testing.assert_allclose(float(a["psnr"]), float(b["psnr"]), rtol=1e-5)
  ssims = [float(metrics.masked_scores(n, x, m)["ssim"]) for n in noisy]
  psnrs = [float(metrics.masked_scores(n, x, m)["psnr"]) for n in noisy]
  assert ssims[0] > ssims[1] > ssims[2] and psnrs[0] > psnrs[1] > psnrs[2]
  # voxels outside the mask do not matter
  outside = noisy[0].at[:4, :4].set(100.0)
  np.testing.assert_allclose(float(metrics.masked_scores(outside, x, m)["psnr"]), psnrs[0], rtol=1e-5)
