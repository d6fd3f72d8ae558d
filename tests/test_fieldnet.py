"""The field network: grids, weights, training (deterministic, refusals), and restore with it."""

import json

import numpy as np
import pytest
from flax import nnx

from mri_jax import evaluate, n4, restore
from mri_jax.data import pipeline
from mri_jax.models import fieldnet
from mri_jax.train import field as field_train
from tests.conftest import run_cli


def _smooth_field(shape, seed=0):
  rng = np.random.default_rng(seed)
  x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
  a = rng.normal(size=5) * 0.3
  return (a[0] * x + a[1] * y + a[2] * x * y + a[3] * x ** 2 + a[4] * y ** 2).astype(np.float32)


@pytest.mark.parametrize("shape", [(64, 64), (58, 58), (128, 96), (150, 152), (96, 160)])
def test_grid_round_trip_keeps_a_smooth_field(shape):
  f = np.stack([_smooth_field(shape, s) for s in range(3)])
  g = fieldnet.to_grid(f)
  assert g.shape == (3, fieldnet.GRID, fieldnet.GRID)
  back = fieldnet.from_grid(fieldnet.to_grid(f, fieldnet.OUT_GRID), shape)
  assert back.shape == f.shape
  # inside the image (the zero padding of a non-square slice blurs into its border only)
  inner = (slice(None), slice(shape[0] // 8, -shape[0] // 8), slice(shape[1] // 8, -shape[1] // 8))
  assert np.abs(back - f)[inner].max() < 0.05 * np.abs(f).max() + 0.02


def test_dihedral_transforms_invert_and_tta_is_flip_equivariant():
  a = np.random.default_rng(0).normal(size=(2, 8, 8, 3))
  outs = {fieldnet._dihedral(a, k).tobytes() for k in range(8)}
  assert len(outs) == 8  # 8 different transforms
  for k in range(8):
    np.testing.assert_array_equal(fieldnet._dihedral(fieldnet._dihedral(a, k), k, inverse=True), a)
  # the averaged prediction of a flipped slice is the flipped prediction
  model = fieldnet.FieldNet(rngs=nnx.Rngs(2))
  model.head.kernel[...] = model.head.kernel[...] + 0.02
  rng = np.random.default_rng(1)
  img = rng.uniform(0.5, 1.5, (2, 48, 48)).astype(np.float32)
  mask = np.ones_like(img, bool)
  lf = np.zeros_like(img)
  r = fieldnet.residual(model, img, lf, mask)
  r_flip = fieldnet.residual(model, img[:, ::-1].copy(), lf, mask)
  assert np.abs(r).max() > 1e-4
  np.testing.assert_allclose(r_flip, r[:, ::-1], atol=2e-4 * max(1.0, float(np.abs(r).max())) + 1e-5)


def test_an_untrained_network_leaves_n4s_field_exactly(tmp_path, monkeypatch):
  model = fieldnet.FieldNet(rngs=nnx.Rngs(3))
  rng = np.random.default_rng(0)
  img = rng.uniform(0.5, 1.5, (5, 50, 70)).astype(np.float32)
  mask = np.zeros_like(img, bool)
  mask[:, 5:45, 8:60] = True
  assert not np.any(fieldnet.residual(model, img, np.zeros_like(img), mask))
  # and restore with it gives what restore without it gives
  fieldnet.save(model, fieldnet.FieldConfig(), tmp_path / "w")
  monkeypatch.setattr(fieldnet, "WEIGHTS_DIR", tmp_path / "w")
  scans, sets = evaluate.real_scan_sets(seed=0, slices=2, groups=("dipy_aniso",))
  ts = sets[0]
  kw = dict(steps=1, axis=0, independent_slices=True, n4_mode="slices", check_consistency=False)
  off = restore.restore_array(ts.corrupted, field_net=0.0, **kw)
  on = restore.restore_array(ts.corrupted, field_net=1.0, **kw)
  np.testing.assert_allclose(on.field, off.field, rtol=1e-5)
  # the same field by another float path: the two Wiener passes carry its rounding (≤ 4e-6 seen)
  np.testing.assert_allclose(on.image, off.image, rtol=1e-5, atol=2e-5 * float(off.image.max()))


def test_restore_divides_out_the_networks_correction_on_a_padded_non_square_slice(tmp_path, monkeypatch):
  """Per-slice path, a slice that needs padding to the model's size bucket: the field restore
  returns is N4's times exp(w × the network's residual) (up to one scale per slice)."""
  model = fieldnet.FieldNet(rngs=nnx.Rngs(5))
  model.head.kernel[...] = model.head.kernel[...] + 0.05
  fieldnet.save(model, fieldnet.FieldConfig(), tmp_path / "w")
  monkeypatch.setattr(fieldnet, "WEIGHTS_DIR", tmp_path / "w")
  scans, sets = evaluate.real_scan_sets(seed=0, slices=2, groups=("dipy_aniso",))  # 58×58
  img = sets[0].corrupted[:, 3:, :-9]  # 55×49: padded on both axes
  kw = dict(steps=1, axis=0, independent_slices=True, n4_mode="slices", check_consistency=False)
  off = restore.restore_array(img, field_net=0.0, **kw)
  on = restore.restore_array(img, field_net=0.6, **kw)
  res = fieldnet.residual(model, img / off.field, np.log(off.field), off.mask)
  assert np.abs(res).max() > 0.01
  ratio = on.field / (off.field * np.exp(0.6 * res))
  for r in ratio:
    assert r.std() / r.mean() < 1e-4


def test_damaged_field_weights_are_one_line_errors(tmp_path, monkeypatch):
  from mri_jax.errors import UserInputError

  (tmp_path / "w").mkdir()
  fieldnet.save(fieldnet.FieldNet(rngs=nnx.Rngs(0)), fieldnet.FieldConfig(), tmp_path / "w")
  (tmp_path / "w" / "params.npz").write_bytes(b"not an npz")
  monkeypatch.setattr(fieldnet, "WEIGHTS_DIR", tmp_path / "w")
  with pytest.raises(UserInputError, match="cannot be read"):
    restore.field_model()
  monkeypatch.setattr(fieldnet, "WEIGHTS_DIR", tmp_path / "missing")
  with pytest.raises(UserInputError, match="missing"):
    restore.field_model()
  # an extra parameter in the file is refused too
  fieldnet.save(fieldnet.FieldNet(rngs=nnx.Rngs(0)), fieldnet.FieldConfig(), tmp_path / "x")
  with np.load(tmp_path / "x" / "params.npz") as z:
    arrays = {k: z[k] for k in z.files}
  arrays["stray"] = np.zeros(3)
  np.savez(tmp_path / "x" / "params.npz", **arrays)
  with pytest.raises(ValueError, match="unexpected"):
    fieldnet.load(tmp_path / "x")


def test_weights_round_trip_and_refusals(tmp_path):
  model = fieldnet.FieldNet(rngs=nnx.Rngs(1))
  # make the head non-zero so the prediction is not trivially zero
  model.head.kernel[...] = model.head.kernel[...] + 0.01
  fieldnet.save(model, fieldnet.FieldConfig(), tmp_path / "w", {"note": "test"})
  back = fieldnet.load(tmp_path / "w")
  x = np.random.default_rng(0).normal(size=(2, fieldnet.GRID, fieldnet.GRID, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(back(x)))
  assert json.loads((tmp_path / "w" / "config.json").read_text())["note"] == "test"
  meta = json.loads((tmp_path / "w" / "config.json").read_text())
  meta["channels"] = [8, 16, 32, 32]
  (tmp_path / "w" / "config.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="shape"):
    fieldnet.load(tmp_path / "w")


def test_shipped_network_removes_field_n4_leaves_on_real_scans():
  """On the real-scan set (simulator corruption), N4's field refined by the shipped network is
  closer to the true one than N4's alone in every group, and by ≥ 20 % over the groups."""
  model = fieldnet.load()
  settings = restore.restore_n4_settings(restore.load_model(None))
  scans, sets = evaluate.real_scan_sets(seed=0, slices=2, groups=("dipy_b0", "dipy_aniso", "mosaic"))
  before, after = [], []
  for ts in sets[::2]:  # the simulator corruption of each group
    masks = np.stack([np.asarray(n4.otsu_mask(x)) for x in ts.corrupted])
    res = n4.n4_batch(ts.corrupted, masks, settings=settings)
    lf = np.asarray(res.log_field)
    refined = lf + fieldnet.residual(model, ts.corrupted * np.exp(-lf), lf, masks)
    err_n4 = evaluate.bias_residual(ts.corrupted * np.exp(-lf), ts.clean, ts.mask)
    err_net = evaluate.bias_residual(ts.corrupted * np.exp(-refined), ts.clean, ts.mask)
    assert err_net.mean() < err_n4.mean(), (ts.name, err_n4, err_net)
    before.append(err_n4.mean())
    after.append(err_net.mean())
  assert np.mean(after) < 0.8 * np.mean(before), (before, after)


def _blob(shape=(96, 80)):
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  return ((yy - 50) ** 2 / 30 ** 2 + (xx - 36) ** 2 / 25 ** 2) < 1


def test_random_log_fields_are_smooth_seeded_and_within_their_range():
  fg = _blob()
  fields = [field_train.random_log_field(fg, np.random.default_rng(s)) for s in range(40)]
  again = field_train.random_log_field(fg, np.random.default_rng(3))
  np.testing.assert_array_equal(fields[3], again)
  lo, hi = field_train.RANDOM_LOG_STD
  for f in fields:
    assert f.shape == fg.shape and np.all(np.isfinite(f))
    assert abs(f[fg].mean()) < 1e-5 and lo - 1e-4 <= f[fg].std() <= hi + 1e-4
    # smooth: a pixel step changes the log field by a small share of its spread inside the object
    step = np.abs(np.diff(f, axis=0))[fg[1:] & fg[:-1]].max()
    assert step < 0.1 * (f[fg].max() - f[fg].min())
  stds = [f[fg].std() for f in fields]
  assert max(stds) - min(stds) > 0.5 * (hi - lo)  # the strength varies from field to field


@pytest.mark.parametrize("kind", field_train.AUGMENT_KINDS)
def test_recorruption_keeps_the_image_under_its_field(kind):
  """Every re-corrupted slice divided by its new field is the record's corrupted slice divided by
  the simulator's field: only the field changes (its noise is scaled with it, as a receive field's)."""
  rng = np.random.default_rng(0)
  fg = _blob()
  true_log = np.where(fg, 0.3, 0.0) * np.linspace(-1, 1, fg.shape[1])[None]
  bias = np.exp(true_log).astype(np.float32)
  corrupted = (rng.uniform(0.5, 1.5, fg.shape) * fg * bias + 0.01).astype(np.float32)
  y, log_b = field_train.recorrupt(corrupted, bias, fg, kind, np.random.default_rng(1))
  np.testing.assert_allclose(y * np.exp(-log_b), corrupted / bias, rtol=1e-5)
  if kind == "no field":
    assert np.all(log_b == 0)
  elif kind == "sim x random":
    assert not np.allclose(log_b, true_log) and np.corrcoef((log_b - true_log)[fg], true_log[fg])[0, 1] < 0.9
  with pytest.raises(ValueError, match="unknown augmentation"):
    field_train.recorrupt(corrupted, bias, fg, "other", rng)


def test_prepare_adds_seeded_recorrupted_copies(tiny_dataset):
  data_dir, _ = tiny_dataset
  settings = n4.N4Settings(iterations=(10, 10), min_shrunk=32)
  kw = dict(limit=6, batch=4, log=lambda m: None)
  plain = field_train.prepare(data_dir, "mri_pairs/tiny", "train", settings, **kw)
  a = field_train.prepare(data_dir, "mri_pairs/tiny", "train", settings, augment=2, seed=5, **kw)
  b = field_train.prepare(data_dir, "mri_pairs/tiny", "train", settings, augment=2, seed=5, **kw)
  c = field_train.prepare(data_dir, "mri_pairs/tiny", "train", settings, augment=2, seed=6, **kw)
  assert len(plain["x"]) == 6 and len(a["x"]) == 18
  for k in "xyw":
    np.testing.assert_array_equal(a[k][:6], plain[k])  # the records as stored come first
    np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a["w"][6:12], plain["w"])  # copies keep each record's foreground
  assert not np.allclose(a["y"][6:], c["y"][6:])
  assert not np.allclose(a["y"][6:12], plain["y"])
  only = field_train.prepare(data_dir, "mri_pairs/tiny", "train", settings, augment=2, seed=5, originals=False, **kw)
  for k in "xyw":  # the copies alone, without the records' N4 run again: the same copies
    np.testing.assert_array_equal(only[k], a[k][6:])


def test_training_is_deterministic_and_learns_on_tiny_records(tiny_dataset, tmp_path):
  data_dir, _ = tiny_dataset
  kw = dict(data_dir=data_dir, datasets=("mri_pairs/tiny",), validation="mri_pairs/tiny", steps=30, batch=4,
            lr=3e-3, augment=1, log=lambda m: None)
  a = field_train.run(tmp_path / "a", **kw)
  b = field_train.run(tmp_path / "b", **kw)
  for name in ("params.npz",):
    with np.load(tmp_path / "a" / name) as za, np.load(tmp_path / "b" / name) as zb:
      assert za.files == zb.files
      for k in za.files:
        np.testing.assert_array_equal(za[k], zb[k])
  assert a == b
  assert a["augment"] == 1 and a["train_slices"] == 2 * len(
      pipeline.data_source("mri_pairs/tiny", "train", data_dir=data_dir))
  v = a["validation"]
  assert v["rms_log_field_refined"] < v["rms_log_field_n4"]
  assert set(a["validation_recorrupted"]) == {"rms_log_field_n4", "rms_log_field_refined"}
  assert fieldnet.load(tmp_path / "a") is not None


def test_train_field_cli_refusals_write_nothing(tiny_dataset, tmp_path, capsys):
  data_dir, _ = tiny_dataset
  code, out, err = run_cli(["train-field", str(tmp_path / "w"), "--data-dir", str(tmp_path / "nothing")], capsys)
  assert code == 2 and "not built" in err and err.count("\n") == 1
  assert not (tmp_path / "w").exists()
  code, out, err = run_cli(["train-field", str(tmp_path / "w"), "--data-dir", str(data_dir), "--steps", "0"], capsys)
  assert code == 2 and "--steps" in err and not (tmp_path / "w").exists()
  code, out, err = run_cli(["train-field", str(tmp_path / "w"), "--data-dir", str(data_dir), "--augment", "9"], capsys)
  assert code == 2 and "--augment" in err and err.count("\n") == 1 and not (tmp_path / "w").exists()
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "params.npz").write_bytes(b"keep")
  code, out, err = run_cli(["train-field", str(tmp_path / "w"), "--data-dir", str(data_dir),
                            "--dataset", "mri_pairs/tiny", "--validation", "none"], capsys)
  assert code == 2 and "--overwrite" in err
  assert (tmp_path / "w" / "params.npz").read_bytes() == b"keep"
  code, out, err = run_cli(["train-field", str(tmp_path / "w2"), "--data-dir", str(data_dir), "--dataset",
                            "mri_pairs/tiny", "--validation", "none", "--steps", "3", "--batch-size", "4"], capsys)
  assert code == 0 and "wrote" in out and (tmp_path / "w2" / "params.npz").is_file()


@pytest.mark.parametrize("bad", ["yes", True, -0.1, 1.5, float("nan")])
def test_restore_refuses_a_bad_field_net_weight(bad):
  from mri_jax.errors import UserInputError

  with pytest.raises(UserInputError, match="--field-net"):
    restore.check_options(field_net=bad)
