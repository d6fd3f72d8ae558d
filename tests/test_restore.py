"""`mri-jax restore` / `export-weights`: shapes, headers, scale, errors, determinism, the shipped model."""

import json
import subprocess
import sys

import jax
import nibabel as nib
import numpy as np
import pytest

from mri_jax import restore
from mri_jax.errors import UserInputError
from mri_jax.data import pairs
from tests.conftest import run_cli, write_nifti


@pytest.fixture(scope="module")
def subject():
  """A held-out synthetic subject at 4 mm (clean volume, mask) and its corrupted version."""
  cfg = pairs.PairsConfig(voxel_mm=4)
  clean, mask, _, _ = pairs.synthetic_subject(cfg, "test", 0)
  rng = np.random.default_rng(0)
  noisy, _, _ = pairs.corrupt(np.moveaxis(clean, -1, 0), np.moveaxis(mask, -1, 0),
                              rng.choice([1, 8], clean.shape[-1]), jax.random.key(0))
  return clean, mask, np.moveaxis(noisy, 0, -1)


def test_shipped_weights_load_and_describe_the_default_config():
  model = restore.load_model()
  assert model.config.model.space == "latent" and model.factor == 16
  assert model.default_steps == 1 and model.max_steps >= 4
  size = sum(p.stat().st_size for p in restore.WEIGHTS_DIR.iterdir())
  assert size < 50e6


def test_fast_weights_are_the_fast_config_and_restore_as_well_as_the_default(subject):
  """The shipped fast weights are `configs/mixed.py:fast` (narrow autoencoder and UNet, no N4
  conditioning, no fidelity path) and restore the held-out subject's slices above the input and
  within 0.01 SSIM of the default weights."""
  from configs import mixed
  from mri_jax import metrics

  fast = restore.load_model(restore.FAST_WEIGHTS_DIR)
  want = mixed.get_config("fast").model
  for key in ("ae_channels", "unet_channels", "condition_n4", "fidelity", "space"):
    assert tuple(np.ravel(fast.config.model[key])) == tuple(np.ravel(want[key])), key
  assert fast.restorer.fid_def is None and fast.params["fid"] is None and fast.factor == 16
  assert sum(p.stat().st_size for p in restore.FAST_WEIGHTS_DIR.iterdir()) < 10e6
  clean, mask, noisy = subject
  z = np.argsort(mask.sum(axis=(0, 1)))[-3:]  # the three fullest slices, as a stack of images
  images, refs, masks = (np.moveaxis(a[:, :, z], -1, 0) for a in (noisy, clean, mask))
  kw = dict(axis=0, independent_slices=True, check_consistency=False)
  out_fast = restore.restore_array(images, fast, **kw).image
  out_default = restore.restore_array(images, **kw).image

  def ssim(x):
    return float(np.mean([metrics.masked_scores(a, r, m)["ssim"] for a, r, m in zip(x, refs, masks)]))

  assert ssim(out_fast) > ssim(images) + 0.03  # measured: 0.933 against 0.885
  assert ssim(out_fast) > ssim(out_default) - 0.01


def test_restore_2d_odd_size_keeps_header_and_scale(subject, tmp_path, capsys):
  _, mask, noisy = subject
  z = int(np.argmax(mask.sum(axis=(0, 1))))
  img2d = 1000.0 * noisy[3:-2, 1:, z]  # odd size, arbitrary intensity scale
  affine = np.array([[0, -2.0, 0, 10], [2.0, 0, 0, -5], [0, 0, 2.0, 3], [0, 0, 0, 1]])
  src = write_nifti(tmp_path / "slice.nii.gz", img2d, affine)
  src_bytes = src.read_bytes()
  for name, data in (("xy", img2d), ("xy1", img2d[..., None])):
    inp = write_nifti(tmp_path / f"{name}.nii.gz", data, affine)
    out = tmp_path / f"{name}_out.nii.gz"
    code, stdout, _ = run_cli(["restore", str(inp), str(out), "--quiet"], capsys)
    assert code == 0 and "wrote" in stdout
    res = nib.load(str(out))
    assert res.shape == data.shape
    np.testing.assert_allclose(res.affine, affine)
    assert bytes(res.header["descrip"]).startswith(b"mri-jax restore")
    r = np.asarray(res.dataobj).reshape(img2d.shape)
    assert np.all(np.isfinite(r)) and r.min() >= 0.0
    fg = img2d > 0.3 * img2d.max()
    ratio = r[fg].mean() / img2d[fg].mean()
    assert 0.5 < ratio < 2.0, ratio  # output on the input's intensity scale
  assert src.read_bytes() == src_bytes


def test_restore_3d_anisotropic_auto_axis_save_field_and_determinism(subject, tmp_path, capsys):
  _, _, noisy = subject
  vol = noisy[:, :, ::3]  # thick slices along z
  inp = write_nifti(tmp_path / "vol.nii.gz", vol, np.diag([4.0, 4.0, 12.0, 1.0]))
  outs = [tmp_path / f"out{i}.nii.gz" for i in range(2)]
  field = tmp_path / "field.nii.gz"
  code, stdout, _ = run_cli(["restore", str(inp), str(outs[0]), "--save-field", str(field), "--quiet",
                          "--batch-size", "3", "--seed", "5"], capsys)
  assert code == 0 and "slices along axis 2" in stdout
  code, _, _ = run_cli(["restore", str(inp), str(outs[1]), "--quiet", "--batch-size", "3", "--seed", "5"], capsys)
  assert code == 0
  assert outs[0].read_bytes() == outs[1].read_bytes()
  f = np.asarray(nib.load(str(field)).dataobj)
  assert f.shape == vol.shape and f.min() > 0 and np.all(np.isfinite(f))
  assert "consistency: residual energy" in stdout and "SURE blend: share of the network-piloted Wiener filter's change" in stdout
  # --no-blend: the network's output with the noise clamp only, and no blend line
  code, stdout, _ = run_cli(["restore", str(inp), str(tmp_path / "nb.nii.gz"), "--quiet", "--batch-size", "3",
                             "--seed", "5", "--no-blend"], capsys)
  assert code == 0 and "SURE blend" not in stdout
  assert not np.array_equal(np.asarray(nib.load(str(tmp_path / "nb.nii.gz")).dataobj),
                            np.asarray(nib.load(str(outs[0])).dataobj))
  # the noise floor: read once from the volume's pooled air, reported, kept on request
  assert "noise floor removed:" in stdout and "read from the air on 11 of 11 slice(s)" in stdout
  code, stdout, _ = run_cli(["restore", str(inp), str(tmp_path / "kf.nii.gz"), "--quiet", "--batch-size", "3",
                             "--seed", "5", "--keep-noise-floor"], capsys)
  assert code == 0 and "noise floor" not in stdout
  kept = np.asarray(nib.load(str(tmp_path / "kf.nii.gz")).dataobj)
  removed = np.asarray(nib.load(str(outs[0])).dataobj)
  assert (kept >= removed - 1e-6).all() and (kept > removed).any()  # removing the floor only lowers


def test_restore_writes_residual_and_uncertainty_maps(subject, tmp_path, capsys):
  _, _, noisy = subject
  vol = noisy[:, :, 10:13]
  inp = write_nifti(tmp_path / "vol.nii.gz", vol, np.diag([4.0, 4.0, 4.0, 1.0]))
  out, resid, unc = (tmp_path / f"{n}.nii.gz" for n in ("out", "resid", "unc"))
  code, stdout, err = run_cli(["restore", str(inp), str(out), "--quiet", "--axis", "2", "--save-residual", str(resid),
                               "--save-uncertainty", str(unc), "--uncertainty-seeds", "3"], capsys)
  assert code == 0, err
  r = np.asarray(nib.load(str(resid)).dataobj)
  u = np.asarray(nib.load(str(unc)).dataobj)
  assert r.shape == u.shape == vol.shape and np.all(np.isfinite(r)) and u.min() >= 0.0
  s = restore.restore_array(vol, axis=2).consistency
  assert len(s["energy"]) == 3 and all(e > 0 for e in s["energy"])
  code, _, err = run_cli(["restore", str(inp), str(tmp_path / "o2.nii.gz"), "--save-residual", str(resid),
                          "--overwrite", "--save-uncertainty", str(resid)], capsys)
  assert code == 2 and "must be different files" in err
  res = restore.restore_array(vol, steps=2, axis=0, batch_size=4)
  assert res.axis == 0 and res.image.shape == vol.shape and np.all(np.isfinite(res.image))


def test_auto_axis_prefers_thick_voxels_then_superior_direction():
  assert restore.auto_axis((10, 10, 10), (1, 1, 3)) == 2
  assert restore.auto_axis((10, 10, 10), (3, 1, 1)) == 0
  coronal = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])  # voxel y → world z
  assert restore.auto_axis((10, 10, 10), (1, 1, 1), coronal) == 1


@pytest.mark.parametrize("case", ["4d", "nan", "constant", "not_nifti", "bad_checkpoint", "steps0", "steps99",
                                  "batch0", "field_without_n4", "output_exists", "tiny_image"])
def test_restore_errors_are_one_line_and_write_nothing(case, subject, tmp_path, capsys):
  _, _, noisy = subject
  good = write_nifti(tmp_path / "good.nii.gz", noisy[..., noisy.shape[-1] // 2])
  out = tmp_path / "out.nii.gz"
  argv = ["restore", str(good), str(out), "--quiet"]
  if case == "4d":
    argv[1] = str(write_nifti(tmp_path / "v4.nii.gz", np.ones((8, 8, 8, 2))))
  elif case == "nan":
    bad = noisy[..., 5].copy()
    bad[3, 3] = np.nan
    argv[1] = str(write_nifti(tmp_path / "nan.nii.gz", bad))
  elif case == "constant":
    argv[1] = str(write_nifti(tmp_path / "c.nii.gz", np.full((32, 32), 7.0)))
  elif case == "not_nifti":
    (tmp_path / "x.nii.gz").write_text("hello")
    argv[1] = str(tmp_path / "x.nii.gz")
  elif case == "bad_checkpoint":
    (tmp_path / "ck").mkdir()
    argv += ["--checkpoint", str(tmp_path / "ck")]
  elif case == "steps0":
    argv += ["--steps", "0"]
  elif case == "steps99":
    argv += ["--steps", "99"]
  elif case == "batch0":
    argv += ["--batch-size", "0"]
  elif case == "field_without_n4":
    argv += ["--n4", "none", "--save-field", str(tmp_path / "f.nii.gz")]
  elif case == "output_exists":
    out.write_bytes(b"keep me")
  elif case == "tiny_image":
    argv[1] = str(write_nifti(tmp_path / "t.nii.gz", np.random.default_rng(0).random((5, 40))))
  code, stdout, err = run_cli(argv, capsys)
  assert code == 2, (case, err)
  assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err
  if case == "output_exists":
    assert out.read_bytes() == b"keep me"
  else:
    assert not out.exists()


def test_console_restore_error_has_no_traceback(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "mri_jax", "restore", str(tmp_path / "none.nii.gz"),
                         str(tmp_path / "o.nii.gz")], capture_output=True, text=True)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_export_weights_round_trip_matches_the_workdir(tiny_dataset, tmp_path, capsys):
  from mri_jax import train
  from tests.conftest import tiny_config

  data_dir, _ = tiny_dataset
  train.train(tiny_config(data_dir, ae_steps=2, diffusion_steps=2), tmp_path / "run", log=lambda m: None)
  code, stdout, _ = run_cli(["export-weights", str(tmp_path / "run"), str(tmp_path / "export")], capsys)
  assert code == 0 and "from step 4" in stdout
  a, b = restore.load_model(tmp_path / "run"), restore.load_model(tmp_path / "export")
  x = np.random.default_rng(1).uniform(0.1, 1.0, (2, 48, 48)).astype(np.float32)
  ra = restore.restore_array(x, a, axis=0).image
  rb = restore.restore_array(x, b, axis=0).image
  np.testing.assert_allclose(ra, rb, rtol=1e-6, atol=1e-6)
  # The model was trained with N4 conditioning: restoring without N4 is refused, not silently off.
  with pytest.raises(UserInputError, match="trained with N4 conditioning"):
    restore.restore_array(x, b, axis=0, n4="none")
  # A mismatched config is a clear error, not a crash.
  meta = json.loads((tmp_path / "export" / "config.json").read_text())
  meta["model"]["latent"] = 3
  (tmp_path / "export" / "config.json").write_text(json.dumps(meta))
  code, _, err = run_cli(["restore", str(write_nifti(tmp_path / "i.nii.gz", x[0])), str(tmp_path / "o.nii.gz"),
                       "--checkpoint", str(tmp_path / "export")], capsys)
  assert code == 2 and "do not match" in err


def test_shipped_model_restores_as_its_reference_outputs():
  """The reference outputs were written by the shipped model and the default restore settings
  (byte-identical on the machine that wrote them; the tolerance covers other XLA builds). Any
  change of the shipped weights or of what `restore_array` does by default must rewrite them."""
  from pathlib import Path

  ref = np.load(Path(__file__).parent / "fixtures" / "shipped_restore_reference.npz")
  r2 = restore.restore_array(ref["image2d"])
  r3 = restore.restore_array(ref["volume"], axis=2)
  np.testing.assert_allclose(r2.image, ref["restored2d"], rtol=1e-4, atol=1e-4 * float(ref["restored2d"].max()))
  np.testing.assert_allclose(r3.image, ref["restored3d"], rtol=1e-4, atol=1e-4 * float(ref["restored3d"].max()))
  np.testing.assert_allclose(r2.field, ref["field2d"], rtol=1e-4)


def test_volume_n4_mode_uses_one_3d_field_and_skips_caps(subject):
  from mri_jax import n4 as n4lib

  _, _, noisy = subject
  vol = noisy[:, :, 4:-4]
  assert vol.shape[2] >= restore.VOLUME_N4_MIN_SLICES
  model = restore.load_model()
  res = restore.restore_array(vol, model, axis=2, n4_mode="volume")
  auto = restore.restore_array(vol, model, axis=2)  # ≥ 8 slices: the volume N4
  np.testing.assert_array_equal(auto.image, res.image)
  sl = restore.restore_array(vol, model, axis=2, n4_mode="slices")
  assert not np.allclose(sl.image, res.image)
  # the field is the volume's 3-D N4 field (continuous across slices), as N4 itself gives it, times
  # the field network's correction of the slices with anatomy, smoothed along the slicing axis
  stack = np.moveaxis(np.maximum(vol, 0), 2, 0)
  mask = np.moveaxis(res.mask, 2, 0)
  ref = n4lib.n4(stack / stack[mask].mean(), mask, settings=restore.restore_n4_settings(model))
  ref_log = np.asarray(ref.log_field)
  plain = restore.restore_array(vol, model, axis=2, n4_mode="volume", field_net=0.0)
  np.testing.assert_allclose(np.moveaxis(plain.field, 2, 0), np.exp(ref_log), rtol=1e-4)
  counts = mask.reshape(len(mask), -1).sum(axis=1)
  caps = counts < max(restore.MIN_FOREGROUND, restore.PASS_THROUGH_FRACTION * counts.max())
  idx = np.flatnonzero(~caps)
  corr = restore._volume_field_correction(stack, ref_log, mask, idx, restore.DEFAULT_FIELD_NET)
  expected = ref_log + corr
  np.testing.assert_allclose(np.moveaxis(res.field, 2, 0), np.exp(expected), rtol=1e-3)
  assert np.abs(corr).max() > 1e-3  # the network did change the field
  # continuous through the volume, caps included: no jump where restoring stops
  steps = np.abs(np.diff(corr, axis=0)).max(axis=(1, 2))
  assert steps.max() < 0.5 * np.abs(corr).max() + 1e-6
  # slices without anatomy are never restored: only divided by the volume's field (one scale) ...
  kept = restore.restore_array(vol, model, axis=2, n4_mode="volume", noise_floor=False)
  out = np.moveaxis(kept.image, 2, 0)
  corrected = np.maximum(stack[caps], 0) * np.exp(-expected)[caps]
  assert caps.any()
  ratio = out[caps][corrected > 0] / corrected[corrected > 0]
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
  # ... and, by default, their noise floor removed as on the restored slices (`_caps_without_floor`)
  out = np.moveaxis(res.image, 2, 0)
  np.testing.assert_allclose(out[caps], restore._caps_without_floor(stack[caps], mask[caps], np.exp(expected)[caps],
                                                                    ratio[0], res.noise_floor[idx[0]]),
                             rtol=1e-3, atol=1e-3)
  np.testing.assert_array_equal(np.moveaxis(sl.image, 2, 0)[caps], np.maximum(stack[caps], 0))  # per-slice mode
  assert np.all(np.isfinite(res.image)) and res.image.min() >= 0
  # a short stack (< 8 slices) keeps per-slice N4 under 'auto'
  short = vol[..., :4]
  np.testing.assert_array_equal(restore.restore_array(short, model, axis=2).image,
                                restore.restore_array(short, model, axis=2, n4_mode="slices").image)


def test_volume_caps_air_matches_the_restored_slices_air():
  """The caps of a volume are passed through, but with the noise floor removed from their air as
  on the restored slices: in coronal and sagittal views the air does not jump from black to grey
  where restoring stops (measured: 8 coils, σ 0.03; caps 0.030 / 0.028 of the foreground mean next
  to restored slices at 0.031 / 0.025; with the floor kept in the caps 0.146 / 0.128)."""
  from scipy import ndimage

  from mri_jax.file_jobs import corruption_settings, simulate_array

  clean, mask, _, _ = pairs.synthetic_subject(pairs.PairsConfig(voxel_mm=4), "test", 0)
  sim = simulate_array(clean, seed=0, settings=corruption_settings(coils=8, noise=0.03), spacing=(4, 4, 4),
                       reference_mask=mask)
  vol = np.asarray(sim.image)
  res = restore.restore_array(vol, axis=2)
  kept = restore.restore_array(vol, axis=2, noise_floor=False)  # the caps as before: the floor kept
  fg = np.moveaxis(res.mask, 2, 0)
  restored = restore.anatomy_slices(fg.reshape(len(fg), -1).sum(axis=1))
  idx = np.flatnonzero(restored)
  edges = [r for r in np.flatnonzero(~restored) if (np.abs(r - idx) == 1).any()]  # caps next to restored slices
  assert len(edges) == 2
  air = ~ndimage.binary_dilation(np.moveaxis(clean, -1, 0) > 1e-3 * clean.max(), np.ones((1, 7, 7), bool))
  out, old = np.moveaxis(res.image, 2, 0), np.moveaxis(kept.image, 2, 0)
  scale = out[idx][fg[idx]].mean()
  for r in edges:
    near = idx[np.argmin(np.abs(idx - r))]
    level, was, beside = (float(img[k][air[k]].mean() / scale) for img, k in ((out, r), (old, r), (out, near)))
    assert abs(level - beside) < 0.01 and abs(was - beside) > 0.08, (r, level, was, beside)


def test_noise_clamp_keeps_the_output_within_k_sigma_of_the_n4_image(subject):
  from mri_jax import consistency

  rng = np.random.default_rng(0)
  truth = np.zeros((2, 40, 40), np.float32)
  truth[:, 8:32, 8:32] = 100.0
  truth[:, 15:20, 15:20] = 160.0  # a "lesion"
  field = np.exp(np.linspace(-0.3, 0.3, 40))[None, None, :] * np.ones_like(truth)
  inputs = np.abs(truth * field + rng.normal(0, 4.0, truth.shape)).astype(np.float32)
  mask = truth > 0
  reference = 1.5 * inputs / field  # the N4 image on the output's scale (b = 1.5)
  erased = np.full_like(truth, 150.0) * mask  # a restorer that erased the lesion and the edges
  for k in (1.0, 3.0):
    out = restore._noise_clamp(erased, reference, np.full(2, 1.5), inputs, field, mask, k)
    bound = np.stack([k * consistency.input_sigma(x, m) * 1.5 / f for x, m, f in zip(inputs, mask, field)])
    assert np.all(np.abs(out - reference) <= bound * (1 + 1e-5) + 1e-4)
    sigma = consistency.robust_sigma(inputs[0], mask[0])
    assert abs(sigma - 4.0) < 0.6, sigma  # the robust estimate ignores the edges
  lesion = out[:, 15:20, 15:20].mean() / out[:, 24:30, 24:30].mean()
  assert lesion > 1.4  # the clamp gives the lesion back (true contrast 1.6)
  # without noise there is nothing to remove: the restored image is the N4-corrected input
  model = restore.load_model()
  c = (truth[0] * field[0]).astype(np.float32)
  res = restore.restore_array(c, model)
  ratio = res.image[res.mask] / (c / res.field)[res.mask]
  np.testing.assert_allclose(ratio, np.median(ratio), rtol=1e-3)
  with pytest.raises(UserInputError, match="--noise-clamp"):
    restore.restore_array(c, model, noise_clamp=-1)


def test_too_little_foreground_is_a_user_error():
  rng = np.random.default_rng(0)
  img = rng.random((32, 32)).astype(np.float32) * 0.1
  img[10:16, 10:16] = 5.0  # 36 foreground voxels: nothing the model can restore
  with pytest.raises(UserInputError, match="too little foreground"):
    restore.restore_array(img)


def _blur_network_case(noise: float, blur: float):
  """Two 64² textured slices with white noise and a "network" that is a Gaussian blur of its N4
  input (divergence known exactly): (truth, mask, inputs, ones, prep, network, restored)."""
  from scipy import ndimage

  from mri_jax.models import restorer as R

  rng = np.random.default_rng(0)
  xx, yy = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
  truth = np.zeros((2, 64, 64), np.float32)
  truth[:, 6:58, 6:58] = 100.0 + 30.0 * np.sin(xx[6:58, 6:58] / 2.0) * np.cos(yy[6:58, 6:58] / 3.0)
  mask = truth > 0
  inputs = (truth + rng.normal(0, noise, truth.shape) * mask).astype(np.float32)
  ones = np.ones_like(truth)
  prep = R.prepare_slices(inputs, mask, 16, n4_backend="none", scale=np.ones(2))

  def network(batches, corrupted, n4_img, desc=""):
    rows = np.concatenate([np.arange(i * 2, i * 2 + 2) for i in batches])
    return np.stack([ndimage.gaussian_filter(n4_img[i], blur) for i in rows])

  restored = np.maximum(network([0], prep.corrupted, prep.n4)[prep.crop], 0.0)
  return truth, mask, inputs, ones, prep, network, restored


@pytest.mark.parametrize("noise, blur", [(12.0, 1.5), (1.0, 4.0)])
def test_sure_blend_picks_the_weight_that_minimises_the_true_error(noise, blur, monkeypatch):
  """A "network" that is a Gaussian blur (divergence known exactly): the blend's α, computed from the
  noisy input alone, lands near the α that minimises the error against the (unseen) truth, and the
  blend is never worse than both the input and the blur. Strong noise: the blur helps, α is large;
  weak noise and a heavy blur that erases the texture: α falls towards 0 (the input)."""
  truth, mask, inputs, ones, prep, network, restored = _blur_network_case(noise, blur)
  mse = lambda x: float(np.mean((x - truth)[mask] ** 2))
  # the shipped two bands: a weight per band, never worse than the one-weight blend's best
  out2, alphas2 = restore._sure_blend(restored, inputs, np.ones(2), inputs, ones, mask, np.ones_like(mask), prep,
                                      network, 2, lowfreq=None, one_weight=False, seed=0)
  assert alphas2.shape == (2, len(restore.BLEND_BANDS) + 1)
  monkeypatch.setattr(restore, "BLEND_BANDS", ())
  out, alphas = restore._sure_blend(restored, inputs, np.ones(2), inputs, ones, mask, np.ones_like(mask), prep,
                                    network, 2, lowfreq=None, one_weight=False, seed=0)
  assert alphas.shape == (2, 1) and np.all((alphas >= 0) & (alphas <= 1))
  alphas = alphas[:, 0]
  grid = np.linspace(0, 1, 101)
  errors = [mse(inputs + a * (restored - inputs)) for a in grid]
  best = grid[int(np.argmin(errors))]
  assert np.all(np.abs(alphas - best) < 0.12), (alphas, best)
  assert mse(out) <= 1.05 * min(errors), (mse(out), min(errors))
  assert mse(out) <= min(mse(inputs), mse(restored)) * 1.02
  assert mse(out2) <= 1.02 * min(errors), (mse(out2), min(errors))
  if noise > 5:
    assert alphas.min() > 0.35
  else:
    assert alphas.max() < 0.3
  # one weight for a volume: the same α on every slice, from the pooled sums
  _, one = restore._sure_blend(restored, inputs, np.ones(2), inputs, ones, mask, np.ones_like(mask), prep,
                               network, 2, lowfreq=None, one_weight=True, seed=0)
  assert one[0, 0] == one[1, 0] and abs(one[0, 0] - best) < 0.12


def test_pilot_wiener_keeps_what_the_pilot_shows_and_removes_noise():
  """The empirical Wiener filter (BM3D's second step with a pilot): with the truth as the pilot the
  noise drops many-fold; with a flat pilot the noise goes and the mean stays; σ = 0 leaves the image
  alone; odd shapes and a constant image come back unchanged in shape and value."""
  rng = np.random.default_rng(0)
  xx, yy = np.meshgrid(np.arange(61), np.arange(70), indexing="ij")
  truth = (50.0 + 20.0 * np.sin(xx / 3.0) * np.cos(yy / 4.0)).astype(np.float32)
  noisy = (truth + rng.normal(0, 5.0, truth.shape)).astype(np.float32)
  sig = np.full(truth.shape, 5.0, np.float32)
  rmse = lambda x: float(np.sqrt(np.mean((x - truth) ** 2)))  # noqa: E731
  out = restore._pilot_wiener(noisy, truth, sig)
  assert out.shape == truth.shape and out.dtype == np.float32
  assert rmse(out) < rmse(noisy) / 3
  flat = np.full(truth.shape, 50.0, np.float32)
  out = restore._pilot_wiener(noisy - truth + 50.0, flat, sig)  # pure noise around a level: removed
  assert float(np.std(out)) < float(np.std(noisy - truth)) / 4 and abs(float(out.mean()) - 50.0) < 0.5
  np.testing.assert_allclose(restore._pilot_wiener(noisy, truth, np.zeros_like(sig)), noisy, rtol=1e-5)
  np.testing.assert_allclose(restore._pilot_wiener(flat, flat, sig), flat, rtol=1e-5)
  # an edge the pilot does not show (pilot blurred) is still kept where the pilot has energy
  step = np.where(yy < 35, 20.0, 80.0).astype(np.float32)
  from scipy import ndimage

  out = restore._pilot_wiener(step + rng.normal(0, 2.0, step.shape).astype(np.float32),
                              ndimage.gaussian_filter(step, 1.0), np.full(step.shape, 2.0, np.float32))
  assert np.abs(out - step)[:, 30:40].max() < 15.0 and float(np.abs(out - step).mean()) < 1.5


def test_pilot_wiener_passes_chain_the_filter_on_its_own_output():
  """`passes` = 2 (restore's default) is the one-pass filter run again with its output as the
  pilot (whether that helps is an empirical matter: RESULTS, ninth pass); both passes denoise."""
  from scipy import ndimage

  rng = np.random.default_rng(1)
  xx, yy = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
  truth = (50.0 + 20.0 * np.sin(xx / 3.0) * np.cos(yy / 4.0) + 15.0 * (xx > 30)).astype(np.float32)
  noisy = (truth + rng.normal(0, 6.0, truth.shape)).astype(np.float32)
  sig = np.full(truth.shape, 6.0, np.float32)
  pilot = ndimage.gaussian_filter(truth, 1.5)
  one = restore._pilot_wiener(noisy, pilot, sig, passes=1)
  two = restore._pilot_wiener(noisy, pilot, sig, passes=2)
  assert restore.WIENER_PASSES == 2
  np.testing.assert_allclose(restore._pilot_wiener(noisy, pilot, sig), two)
  np.testing.assert_allclose(two, restore._pilot_wiener(noisy, one, sig, passes=1), rtol=1e-6)
  rmse = lambda x: float(np.sqrt(np.mean((x - truth) ** 2)))  # noqa: E731
  assert max(rmse(one), rmse(two)) < rmse(noisy) / 2


@pytest.mark.parametrize("noise, blur", [(12.0, 1.5), (1.0, 4.0)])
def test_sure_blend_with_the_wiener_filter_weighs_the_filtered_image(noise, blur, monkeypatch):
  """With `wiener`, the blend weighs the pilot-filtered N4 image: its α (from the noisy input alone,
  the probe passing through the filter) lands near the α that minimises the true error of that
  candidate, and the result is no worse than the blend without the filter, nor than the input."""
  monkeypatch.setattr(restore, "BLEND_BANDS", ())
  truth, mask, inputs, ones, prep, network, restored = _blur_network_case(noise, blur)
  mse = lambda x: float(np.mean((x - truth)[mask] ** 2))  # noqa: E731
  args = (inputs, np.ones(2), inputs, ones, mask, np.ones_like(mask), prep, network, 2)
  plain, _ = restore._sure_blend(restored, *args, lowfreq=None, one_weight=False, seed=0)
  sigma = restore._input_sigmas(inputs, mask)
  filtered = np.stack([restore._pilot_wiener(inputs[i], restored[i], np.full((64, 64), sigma[i], np.float32))
                       for i in range(2)])
  grid = np.linspace(0, 1, 101)
  with monkeypatch.context() as m:  # the filtered image's change alone
    m.setattr(restore, "BLEND_NETWORK_TOO", False)
    alone, alphas = restore._sure_blend(restored, *args, lowfreq=None, one_weight=False, seed=0, wiener=True)
  assert alphas.shape == (2, 1)
  for i in range(2):
    err = [float(np.mean((inputs[i] + a * (filtered[i] - inputs[i]) - truth[i])[mask[i]] ** 2)) for a in grid]
    assert abs(alphas[i, 0] - grid[int(np.argmin(err))]) < 0.12, (i, alphas[i, 0], grid[int(np.argmin(err))])
  # the shipped blend weighs the network's own change too: (α of the filtered, β of the network's),
  # near the pair that minimises the true error, and never worse than the filtered change alone
  assert restore.BLEND_NETWORK_TOO and restore.blend_weight_count(True) == 2
  out, alphas = restore._sure_blend(restored, *args, lowfreq=None, one_weight=False, seed=0, wiener=True)
  assert alphas.shape == (2, 2) and np.all((alphas >= 0) & (alphas <= 1))
  coarse = np.linspace(0, 1, 21)
  for i in range(2):
    fc, gc = (filtered[i] - inputs[i])[mask[i]], (restored[i] - inputs[i])[mask[i]]
    e = (inputs[i] - truth[i])[mask[i]]
    err = np.array([[np.mean((e + a * fc + b * gc) ** 2) for b in coarse] for a in coarse])
    got = float(np.mean((e + alphas[i, 0] * fc + alphas[i, 1] * gc) ** 2))
    assert got <= 1.05 * err.min(), (i, alphas[i], got, err.min())
  assert mse(out) <= 1.02 * mse(alone), (mse(out), mse(alone))
  assert mse(out) <= 1.02 * mse(plain), (mse(out), mse(plain))
  assert mse(out) <= 1.02 * mse(inputs)
  # the filter acts in tissue only: the air (here the 6-px frame outside the square) keeps the
  # network's own output, not the filtered floor
  in_tissue, _ = restore._sure_blend(restored, inputs, np.ones(2), inputs, ones, mask, mask, prep, network, 2,
                                     lowfreq=None, one_weight=False, seed=0, wiener=True)
  np.testing.assert_allclose(in_tissue[:, :2, :2], np.maximum(restored[:, :2, :2], 0.0), atol=0.05)
  np.testing.assert_allclose(in_tissue[mask], out[mask], rtol=1e-5, atol=1e-3)
  # restore_array's switch reaches the blend, and is checked
  with pytest.raises(UserInputError, match="wiener"):
    restore.check_options(wiener="yes")


@pytest.mark.parametrize("one_weight, wiener", [(False, False), (True, False), (True, True)])
def test_sure_blend_through_a_field_slice_scales_and_the_lowfreq_fix(one_weight, wiener, monkeypatch):
  """The same check through everything that carries units: a volume's N4 field (the prepared
  inputs of `prepare_slices(log_field=...)`), per-slice scales and the reference's factor, the
  low-frequency fix on both passes, and more slices than a batch (one weight: the middle batch)."""
  from scipy import ndimage

  from mri_jax.models import restorer as R

  monkeypatch.setattr(restore, "BLEND_BANDS", ())
  rng = np.random.default_rng(1)
  xx, yy = np.meshgrid(np.linspace(-1, 1, 64), np.linspace(-1, 1, 64), indexing="ij")
  truth = np.zeros((4, 64, 64), np.float32)
  truth[:, 6:58, 6:58] = 700.0 + 200.0 * np.sin(xx[6:58, 6:58] * 25) * np.cos(yy[6:58, 6:58] * 17)
  mask = truth > 0
  field = np.broadcast_to(np.exp(0.5 * xx + 0.2 * yy), truth.shape).astype(np.float32)
  inputs = (truth * field + rng.normal(0, 60.0, truth.shape) * mask).astype(np.float32)
  prep = R.prepare_slices(inputs, mask, 16, log_field=np.log(field))

  def network(batches, corrupted, n4_img, desc=""):
    rows = np.concatenate([np.arange(i * 2, i * 2 + 2) for i in batches])
    return np.stack([ndimage.gaussian_filter(n4_img[i], 1.2) for i in rows])

  raw = np.maximum(network([0, 1], prep.corrupted, prep.n4)[prep.crop], 0.0) * prep.scale[:, None, None]
  reference, factors = restore._scaled_reference(raw, inputs / field, mask, one_scale=True)
  restored = restore._lowfreq_fix(raw, reference, 1.0)
  out, alphas = restore._sure_blend(restored, reference, factors, inputs, field, mask, np.ones_like(mask), prep,
                                    network, 2, lowfreq=1.0, one_weight=one_weight, seed=0, wiener=wiener)
  target = truth * factors[:, None, None]  # the clean image on the reference's scale
  if wiener:  # the candidate SURE weighs: the N4 image filtered with the network's output as the pilot
    sigma = restore._input_sigmas(inputs, mask)
    restored = np.stack([restore._pilot_wiener(reference[i], restored[i], sigma[i] * factors[i] / field[i])
                         for i in range(4)])
  grid = np.linspace(0, 1, 101)
  for rows in ([0, 1, 2, 3],) if one_weight else ([0], [1], [2], [3]):
    err = [float(np.mean((reference + a * (restored - reference) - target)[rows][mask[rows]] ** 2)) for a in grid]
    best = grid[int(np.argmin(err))]
    assert np.all(np.abs(alphas[rows, 0] - best) < 0.12), (rows, alphas[rows, 0], best)
  assert np.all(np.isfinite(out)) and out.min() >= 0
  if one_weight:
    assert np.all(alphas == alphas[0])


def test_restore_cli_independent_slices(subject, tmp_path, capsys):
  """--independent-slices reaches restore_array (one Otsu threshold and N4 per slice: the fixture's
  slices were corrupted with 1 or 8 coils each), and cannot be combined with a volume N4."""
  _, _, noisy = subject
  vol = noisy[:, :, 8:14]
  inp = write_nifti(tmp_path / "stack.nii.gz", vol, np.diag([4.0, 4.0, 4.0, 1.0]))
  out = tmp_path / "out.nii.gz"
  code, stdout, err = run_cli(["restore", str(inp), str(out), "--quiet", "--axis", "2", "--independent-slices"], capsys)
  assert code == 0, err
  expected = restore.restore_array(vol, axis=2, independent_slices=True).image
  np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), expected)
  assert not np.array_equal(expected, restore.restore_array(vol, axis=2).image)
  code, _, err = run_cli(["restore", str(inp), str(tmp_path / "o2.nii.gz"), "--independent-slices",
                          "--n4-mode", "volume"], capsys)
  assert code == 2 and "--independent-slices" in err and not (tmp_path / "o2.nii.gz").exists()


def test_independent_slices_restore_a_slice_with_little_foreground(subject):
  """In a stack of unrelated images (`independent_slices`) each slice is judged on its own
  foreground: one whose Otsu foreground is under a tenth of another slice's is not a volume's cap,
  and is restored (once it went out as the raw input, bias and noise kept). As a volume, the same
  slice is a cap and passes through unchanged."""
  from mri_jax.n4 import otsu_mask

  _, _, noisy = subject
  small = noisy[:, :, 10]
  big = np.kron(noisy[:, :, 11], np.ones((4, 4), np.float32))  # an unrelated image 4× the size
  small = np.pad(small, ((0, big.shape[0] - small.shape[0]), (0, big.shape[1] - small.shape[1])))  # in air
  stack = np.stack([big, small])
  counts = np.array([np.asarray(otsu_mask(x)).sum() for x in stack])
  assert restore.MIN_FOREGROUND <= counts[1] < restore.PASS_THROUGH_FRACTION * counts[0]
  kw = dict(axis=0, n4_mode="slices", check_consistency=False)
  res = restore.restore_array(stack, independent_slices=True, **kw)
  assert np.isfinite(res.blend[1]).all()  # the small slice went through the blend
  assert not np.allclose(res.image[1], small, rtol=0.05, atol=0.05 * float(small.max()))
  vol = restore.restore_array(stack, **kw)
  np.testing.assert_array_equal(vol.image[1], np.maximum(small, 0))


def test_a_frame_of_zeros_changes_nothing(subject):
  """Zero padding around an image (after resampling, skull stripping, a reformat) is cropped before
  N4 and the network, to the positive voxels' box grown by `FRAME_MARGIN` of its size: however
  much padding lies beyond that margin, the image inside is restored the same, the frame stays
  zero, the field continues by its edge values and the per-slice scores line up with the padded
  slices. (In a 4× larger frame N4's spline spread over the zeros: one slice came back below its
  input, 0.764 against 0.819 correlation with the clean slice.)"""
  _, _, noisy = subject
  model = restore.load_model()
  x = noisy[:, :, 10]
  g = [int(np.ceil(restore.FRAME_MARGIN * n)) for n in x.shape]  # the margin kept on each side
  alone = restore.restore_array(np.pad(x, ((g[0], g[0]), (g[1], g[1]))), model)
  framed = restore.restore_array(np.pad(x, ((g[0], 60), (g[1] + 9, 70))), model)
  inside = (slice(0, x.shape[0] + 2 * g[0]), slice(9, 9 + x.shape[1] + 2 * g[1]))
  np.testing.assert_array_equal(framed.image[inside], alone.image)
  assert framed.image.shape == (x.shape[0] + g[0] + 60, x.shape[1] + g[1] + 79)
  assert not framed.image[x.shape[0] + 2 * g[0]:].any() and not framed.mask[x.shape[0] + 2 * g[0]:].any()
  assert not framed.image[:, :9].any()
  np.testing.assert_array_equal(framed.field[inside], alone.field)
  np.testing.assert_array_equal(framed.field[-1, inside[1]], alone.field[-1])  # edge values
  assert framed.consistency["energy"] == alone.consistency["energy"]
  vol = noisy[:, :, 14:24]  # 10 slices: the volume's 3-D N4
  g = [int(np.ceil(restore.FRAME_MARGIN * n)) for n in vol.shape]
  a = restore.restore_array(np.pad(vol, [(n, n + 7) for n in g]), model, axis=2)
  b = restore.restore_array(np.pad(vol, [(n + 5, n) for n in g]), model, axis=2)
  in_a = tuple(slice(0, n + 2 * m) for n, m in zip(vol.shape, g))
  in_b = tuple(slice(5, 5 + n + 2 * m) for n, m in zip(vol.shape, g))
  np.testing.assert_array_equal(a.image[in_a], b.image[in_b])
  assert not b.image[:5].any() and not a.image[-7:].any()
  assert a.blend.shape[0] == vol.shape[2] + 2 * g[2] + 7 and np.isnan(a.blend[-7:]).all()
  np.testing.assert_array_equal(a.blend[in_a[2]], b.blend[in_b[2]])
  assert np.isfinite(a.blend[g[2]:g[2] + vol.shape[2]]).all()
  ea, eb = a.consistency["energy"], b.consistency["energy"]
  assert np.isnan(ea[-7:]).all() and np.isnan(eb[:5]).all()
  np.testing.assert_array_equal(ea[in_a[2]], eb[in_b[2]])
  one = np.zeros((x.shape[0], x.shape[1], 5), np.float32)  # one non-zero plane is still read as a volume
  one[:, :, 4] = x
  res = restore.restore_array(one, model, axis=2)
  assert res.image.shape == one.shape and not res.image[:, :, :4].any() and res.image[:, :, 4].any()
  assert restore.nonzero_box(x) is None and restore.nonzero_box(np.zeros((4, 4))) is None
  dot = np.zeros((61, 61), np.float32)  # one bright voxel: the box keeps ≥ 8 voxels, the error is about the input
  dot[30, 30] = 1.0
  assert restore.nonzero_box(dot) == (slice(29, 37), slice(29, 37))
  with pytest.raises(UserInputError, match="too little foreground"):
    restore.restore_array(dot, model)


def test_the_noise_floor_is_removed_from_dark_tissue_and_air():
  """A 16-coil root sum of squares raises the air to ≈ 5.6σ and dark tissue with it. Restore reads
  the coil count and σ from the air, and removing the floor brings the air near zero and dark tissue
  closer to the clean image; the consistency check scores the image before the removal (the
  input's expected magnitude), so it is the same with the removal off; the CLI reports it."""
  from mri_jax.data import pairs

  t = pairs.template_tissues(2)
  clean = np.tensordot(np.array([0.3, 0.6, 1.0], np.float32), t, axes=1)[..., 45].astype(np.float32)
  clean = np.pad(clean, 24)
  rng = np.random.default_rng(2)
  coils, sigma = 16, 0.03
  image = np.sqrt(sum(np.abs(clean / np.sqrt(coils) + sigma * (rng.standard_normal(clean.shape)
                                                                + 1j * rng.standard_normal(clean.shape))) ** 2
                      for _ in range(coils))).astype(np.float32)
  model = restore.load_model()
  on = restore.restore_array(image, model)
  off = restore.restore_array(image, model, noise_floor=False)
  assert off.noise_floor is None
  got_coils, got_sigma, from_air = on.noise_floor[0]
  assert from_air == 1 and got_coils == pytest.approx(coils, rel=0.25) and got_sigma == pytest.approx(sigma, rel=0.15)
  from scipy import ndimage

  air = ~ndimage.binary_dilation(clean > 0, iterations=4)
  assert off.image[air].mean() > 3 * sigma and on.image[air].mean() < 0.3 * off.image[air].mean()
  dark = (clean > 0.05) & (clean < 0.4)  # the CSF-like class, 0.3
  err = lambda r: np.abs(r.image[dark] / r.image[clean > 0.8].mean() - clean[dark]).mean()  # noqa: E731
  assert err(on) < 0.8 * err(off)
  assert on.consistency["energy"] == off.consistency["energy"]


def test_dark_anatomy_below_otsus_threshold_keeps_the_clamp_and_the_blend(monkeypatch):
  """A dim region (4 % of the bright tissue, 13σ) lies below a fifth of Otsu's threshold, so the
  input scale's foreground calls it air; `_signal` finds it above the noise floor and restore treats
  it as tissue: two hypo-intense lesions in it keep ≥ 85 % of their contrast, against ≈ 70 % when
  only the Otsu-based foreground counts (SIGNAL_K = ∞), where the network alone shapes the region.
  Pure χ noise of 1, 8 and 32 coils is never taken for anatomy."""
  from mri_jax import evaluate
  from mri_jax.models import restorer as R
  from mri_jax.n4 import otsu_mask

  n = 96
  yy, xx = np.mgrid[:n, :n]
  clean = np.zeros((n, n), np.float32)
  clean[8:88, 8:56] = 1.0
  clean[16:80, 56:80] = 0.04
  centres = ((32, 68), (56, 68))
  for cy, cx in centres:
    clean[(yy - cy) ** 2 + (xx - cx) ** 2 <= 2.5 ** 2] = 0.015
  rng = np.random.default_rng(0)
  noise = lambda shape, s: s * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))  # noqa: E731
  image = np.abs(clean + noise(clean.shape, 0.003)).astype(np.float32)
  mask = np.asarray(otsu_mask(image))
  dark = (slice(20, 76), slice(60, 76))
  assert R.scale_foreground(image[None], mask[None])[0][dark].mean() < 0.05
  floors = restore._read_floors(image[None], mask[None], np.array([0.003]))
  signal = restore._signal(image[None], floors)[0]
  assert signal[dark].mean() > 0.95 and not signal[:6].any()
  for coils in (1, 8, 32):
    air = np.sqrt(sum(np.abs(noise((256, 256), 0.01)) ** 2 for _ in range(coils)))
    assert not restore._signal(air[None], np.array([[coils, 0.01, 1.0]]))[0].any()

  def kept(x):  # each lesion's share of its contrast vs its ring, as evaluate's lesion test measures it
    return np.array([evaluate.lesion_contrast_kept(x[None], clean[None], [(0, c, -1)])["hypo"] for c in centres])

  model = restore.load_model()
  assert (kept(restore.restore_array(image, model).image) >= 0.85).all()
  monkeypatch.setattr(restore, "SIGNAL_K", np.inf)
  assert (kept(restore.restore_array(image, model).image) <= 0.8).all()
