"""Synthetic subjects: diffeomorphic deformations, MR contrasts in the right order, determinism."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mri_jax.data import anatomy, synth


@functools.lru_cache(maxsize=None)
def _tissues_2d():
  a = anatomy.load_mni152()
  return np.stack([a.csf, a.gm, a.wm])[:, ::2, ::2, 90]


def test_signal_equation_reduces_to_spin_echo_at_90_degrees():
  t1, t2, pd, tr, te = 850.0, 75.0, 0.7, 500.0, 15.0
  expected = pd * (1 - np.exp(-tr / t1)) * np.exp(-te / t2)
  np.testing.assert_allclose(float(synth.signal(t1, t2, pd, tr, te, 90.0)), expected, rtol=1e-6)


@pytest.mark.parametrize("sequence, order", [
    (0, ("wm", "gm", "csf")), (3, ("wm", "gm", "csf")),  # T1-weighted: WM > GM > CSF
    (1, ("csf", "gm", "wm")),                            # T2-weighted: CSF > GM > WM
])
def test_contrast_order_per_sequence(sequence, order):
  settings = synth.SynthSettings(sequences=(sequence,), texture=0.0, deform_scale=0.0)
  t = _tissues_2d()
  for seed in range(4):
    s = synth.synthesize(jax.random.key(seed), t, settings)
    img, tis = np.asarray(s.image), np.asarray(s.tissues)
    means = {name: img[tis[i] > 0.9].mean() for i, name in enumerate(synth.TISSUES)}
    assert means[order[0]] > means[order[1]] > means[order[2]], (seed, means)
    assert int(s.sequence) == sequence


def test_zero_deformation_is_the_identity_and_default_is_diffeomorphic():
  t = _tissues_2d()
  still = synth.synthesize(jax.random.key(0), t, synth.SynthSettings(deform_scale=0.0))
  np.testing.assert_allclose(np.asarray(still.tissues), np.clip(t, 0, 1), atol=1e-6)
  for seed in range(3):
    s = synth.synthesize(jax.random.key(seed), t)
    det = np.asarray(synth.jacobian_determinant(s.displacement))
    assert det.min() > 0.2, det.min()
    assert 1.0 < np.abs(np.asarray(s.displacement)).max() < 20.0


def test_3d_deformation_is_smooth_and_invertible():
  u = synth.random_displacement(jax.random.key(1), (40, 36, 32), synth.SynthSettings(working_size=20))
  assert u.shape == (3, 40, 36, 32)
  assert float(synth.jacobian_determinant(u).min()) > 0.2
  assert float(jnp.max(jnp.abs(jnp.diff(u, axis=1)))) < 1.0  # voxel-to-voxel change < 1 voxel


def test_deterministic_per_key_and_vmappable():
  t = jnp.asarray(_tissues_2d())
  keys = jax.random.split(jax.random.key(3), 3)
  batch = jax.vmap(lambda k: synth.synthesize(k, t).image)(keys)
  for i in range(3):
    np.testing.assert_allclose(np.asarray(batch[i]), np.asarray(synth.synthesize(keys[i], t).image), atol=1e-5)
  a, b = synth.synthesize(keys[0], t), synth.synthesize(keys[0], t)
  np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
  assert not np.allclose(np.asarray(batch[0]), np.asarray(batch[1]))
  img = np.asarray(batch[0])
  assert np.all(np.isfinite(img)) and img.min() >= 0.0 and 0.5 < img.max() < 1.5
