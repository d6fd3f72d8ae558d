"""The mixed-anatomy generator (`data.labels`, `data.mixed`): behaviour a trainer relies on.

Small images (64² records on a 64² canvas at 4 mm) so the whole file runs in seconds after one
compilation; one batch of 48 examples is shared by the tests that look at the mix as a whole.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mri_jax.data import labels, mixed, pairs

SIZE = 64
SETTINGS = mixed.MixSettings(size=SIZE, min_side=32,
                             labels=labels.LabelSettings(canvas=SIZE, voxel_mm=4.0, distance_steps=12))


@pytest.fixture(scope="module")
def slices():
  return jnp.asarray(labels.template_slices(pairs.template_tissues(4), SIZE, per_axis=8))


@pytest.fixture(scope="module")
def batch(slices):
  keys = jax.random.split(jax.random.key(0), 48)
  return jax.tree.map(np.asarray, mixed.examples(keys, slices, SETTINGS))


_scene = jax.jit(labels.scene, static_argnames=("settings",))


def test_scene_is_reproducible_from_its_key_and_keys_differ(slices):
  a = _scene(jax.random.key(3), slices, SETTINGS.labels)
  b = _scene(jax.random.key(3), slices, SETTINGS.labels)
  c = _scene(jax.random.key(4), slices, SETTINGS.labels)
  np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
  assert np.abs(np.asarray(a.labels) - np.asarray(c.labels)).max() > 0.5


def test_labels_are_partial_volume_partitions(slices):
  for kind_key in range(6):
    s = _scene(jax.random.key(kind_key), slices, SETTINGS.labels)
    lab = np.asarray(s.labels)
    assert lab.min() >= -1e-6
    np.testing.assert_allclose(lab.sum(0), 1.0, atol=1e-4)


def test_both_scene_kinds_and_all_weightings_occur(batch):
  assert set(batch.kind.tolist()) == {0, 1}
  assert set(batch.weighting.tolist()) == set(range(len(mixed.WEIGHTINGS)))


def test_label_intensities_cover_the_range_with_dark_tissue_next_to_air(slices):
  """Skin (the label touching air) is sometimes at the noise floor, sometimes bright; fat is
  bright in T1-like images and dark when fat-saturated; cortical bone always stays dark."""
  keys = jax.random.split(jax.random.key(1), 400)
  s = _scene(jax.random.key(2), slices, SETTINGS.labels)
  body = s._replace(classes=jnp.asarray(labels.BODY_CLASSES), kind=jnp.asarray(1))
  w = jax.random.randint(jax.random.key(5), (400,), 0, len(mixed.WEIGHTINGS))
  values = np.asarray(jax.vmap(lambda k, w: mixed.label_intensities(k, body, w))(keys, w))
  skin = values[:, 1]
  assert (skin < 0.08).mean() > 0.03 and (skin > 0.7).mean() > 0.03
  fat, bone = values[:, 2], values[:, 10]
  t1, pd = np.asarray(w) == 0, np.asarray(w) == 2
  assert fat[t1].min() >= 0.75 and fat[pd].max() <= 0.2
  assert bone[~(np.asarray(w) == 3)].max() <= 0.06
  assert values[:, 0].max() == 0.0  # air


def test_dark_tissue_next_to_air_appears_in_images(batch):
  """Some images have a foreground rim (tissue touching air) darker than 20% of their bright
  tissue (99th percentile)."""
  dark_rims = 0
  for clean, mask, window in zip(batch.clean, batch.mask, batch.window):
    rim = mask & ~np.asarray(labels._dilate(jnp.asarray(~mask & (window > 0), jnp.float32), True) == 0)
    if rim.sum() > 20 and np.median(clean[rim]) < 0.2 * np.percentile(clean[mask], 99):
      dark_rims += 1
  assert dark_rims >= 1


def test_examples_without_air_exist_and_others_have_air(batch):
  no_air = [bool(m[w > 0].all()) for m, w in zip(batch.mask, batch.window)]
  assert 0 < sum(no_air) < len(no_air)


def test_field_of_view_and_framing_vary(batch):
  rows = (batch.window > 0).any(2).sum(1)
  cols = (batch.window > 0).any(1).sum(1)
  assert len(set(zip(rows.tolist(), cols.tolist()))) >= 5
  assert (rows != cols).any() and (rows % 2 == 1).any()
  assert (rows == SIZE).any() and rows.min() >= 32
  # Zoom: the foreground covers very different shares of the field of view.
  share = batch.mask.sum((1, 2)) / (batch.window > 0).sum((1, 2))
  assert share.min() < 0.5 and share.max() > 0.95


def test_clean_images_are_scaled_and_zero_outside_the_field_of_view(batch):
  np.testing.assert_allclose(batch.clean.max((1, 2)), 1.0, rtol=1e-5)
  assert (batch.clean[batch.window == 0] == 0).all()
  assert (batch.mask <= (batch.window > 0)).all() and (batch.mask.sum((1, 2)) >= 16).all()
  means = [c[m].mean() for c, m in zip(batch.clean, batch.mask)]
  assert min(means) > 0.01  # the trainer divides by the mean inside the mask


def test_resolution_varies(batch):
  """Horizontal gradient energy (sharpness) spreads over a wide range: low-resolution images exist."""
  sharp = [np.abs(np.diff(c, axis=0))[m[1:]].mean() / max(c[m].mean(), 1e-6)
           for c, m in zip(batch.clean, batch.mask)]
  assert max(sharp) > 3 * min(sharp)


def test_finish_pads_the_field_of_view_and_masks_the_background(batch):
  ex = jax.tree.map(jnp.asarray, batch)
  noisy = jnp.ones_like(ex.clean)
  out = np.asarray(mixed.finish(noisy, ex))
  assert (out[batch.window == 0] == 0).all()
  zb = batch.zero_background
  if zb.any():
    assert (out[zb][batch.support[zb] == 0] == 0).all()
  assert (out[~zb][batch.window[~zb] > 0] == 1).all()


def test_pixel_detail_makes_images_finer_per_pixel_inside_tissue_only(slices):
  """The `detail` settings (the mixed128fine build): more relative gradient energy at the pixel
  scale than the same keys without them; the detail stays inside the foreground (air untouched)."""
  fine = pairs.mix_settings(pairs.PairsConfig(anatomy="mixed", size=SIZE, canvas=SIZE, voxel_mm=4, detail=True))
  assert fine.p_detail > 0 and fine.zoom[1] < SETTINGS.zoom[1]
  fine = fine._replace(min_side=32)
  keys = jax.random.split(jax.random.key(0), 48)
  plain = jax.tree.map(np.asarray, mixed.examples(keys, slices, SETTINGS))
  finer = jax.tree.map(np.asarray, mixed.examples(keys, slices, fine))
  sharp = lambda b: np.median([np.abs(np.diff(c, axis=1))[m[:, 1:]].mean() / max(c[m].mean(), 1e-6)  # noqa: E731
                               for c, m in zip(b.clean, b.mask)])
  assert sharp(finer) > 1.3 * sharp(plain)
  again = jax.tree.map(np.asarray, mixed.examples(keys, slices, fine))
  np.testing.assert_array_equal(again.clean, finer.clean)  # same key ⇒ same image
  # directly: pixel_detail changes nothing outside the foreground and keeps images non-negative
  img = jnp.asarray(plain.clean[0])
  fg = jnp.asarray(plain.mask[0], jnp.float32)
  out = np.asarray(mixed.pixel_detail(jax.random.key(3), img, fg))
  np.testing.assert_array_equal(out[plain.mask[0] == 0], plain.clean[0][plain.mask[0] == 0])
  assert (out >= 0).all() and np.abs(out - plain.clean[0])[plain.mask[0]].max() > 0.01
