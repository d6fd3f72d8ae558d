"""The real-scan validation set: loaders, the independent corruption model, and `evaluate` on it."""

import ast
import inspect
import json

import numpy as np
import pytest
from scipy import ndimage, special

from mri_jax import evaluate, realscans
from mri_jax.errors import UserInputError
from tests.conftest import run_cli

pytest.importorskip("dipy")
pytest.importorskip("heudiconv")
pytest.importorskip("pydicom")


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------
def test_untile_mosaic_returns_the_tiles_in_row_major_order():
  tiles = np.arange(5 * 3 * 4, dtype=np.float32).reshape(5, 3, 4)
  mosaic = np.zeros((9, 12), np.float32)   # a 3 × 3 grid, the last 4 tiles empty
  for i, t in enumerate(tiles):
    mosaic[(i // 3) * 3:(i // 3 + 1) * 3, (i % 3) * 4:(i % 3 + 1) * 4] = t
  np.testing.assert_array_equal(realscans.untile_mosaic(mosaic, 3, 4, 5), tiles)
  with pytest.raises(ValueError):
    realscans.untile_mosaic(mosaic, 3, 4, 10)


@pytest.mark.parametrize("group", realscans.GROUPS)
def test_each_group_loads_normalised_slices_with_a_sensible_foreground(group):
  scan, = realscans.load((group,), slices=2)
  assert scan.clean.shape == scan.mask.shape and len(scan.clean) == 2
  assert np.isfinite(scan.clean).all()
  # Scaled so the foreground's 99.5th percentile is 1.
  assert np.percentile(scan.clean[scan.mask], 99.5) == pytest.approx(1.0, rel=1e-3)
  # Head (or bottle) vs air: neither a speck nor the whole field of view, and brighter than the air.
  frac = scan.mask.mean(axis=(1, 2))
  assert ((frac > 0.1) & (frac < 0.7)).all(), frac
  assert scan.clean[scan.mask].mean() > 5 * scan.clean[~scan.mask].mean()
  assert 0.0 < scan.reference_noise < 0.1


def test_mosaic_tiles_are_cut_at_the_slice_boundaries():
  # Cut right, neighbouring slices of the 3 T mosaic are nearly the same image; cut half a tile
  # off, they are not.
  scan = realscans.mosaic(slices=None)
  a, b = scan.clean[len(scan.clean) // 2], scan.clean[len(scan.clean) // 2 + 1]
  assert scan.clean.shape[1:] == (150, 152)
  assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.8
  assert np.corrcoef(a.ravel(), np.roll(b, 75, axis=0).ravel())[0, 1] < 0.5


def test_unknown_group_is_a_user_error():
  with pytest.raises(UserInputError, match="known"):
    realscans.load(("no_such_group",))


# --------------------------------------------------------------------------------------------
# Independent corruption model
# --------------------------------------------------------------------------------------------
def test_independent_model_does_not_use_the_simulator():
  tree = ast.parse(inspect.getsource(realscans))
  names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
  names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
  names += [f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
  assert not [m for m in names if "physics" in m or m.startswith(("jax", "mri_jax.data"))], names


def test_polynomial_field_matches_its_closed_form_and_is_flat_beyond_the_clip_radius():
  u, v = np.meshgrid(np.linspace(-2, 2, 41), np.linspace(-2, 2, 41), indexing="ij")
  coef = np.zeros(9)
  coef[0] = 0.3   # the first monomial is v
  field = realscans.polynomial_log_field(u, v, coef)
  inside = np.hypot(u, v) <= 1.25
  np.testing.assert_allclose(field[inside], np.exp(0.3 * v[inside]), rtol=1e-12)
  # Along a ray beyond radius 1.25 the field keeps its value at 1.25.
  np.testing.assert_allclose(field[20, -1], np.exp(0.3 * 1.25), rtol=1e-12)


def test_loop_field_on_its_axis_matches_the_closed_form():
  # Circular loop, unit current, μ0/4π = 1: on the axis B = 2π a² / (a² + z²)^{3/2}, along the axis.
  # A 48-gon's field differs from the circle's by O((π/48)²) ≈ 0.4 %.
  a, z = 0.6, np.array([0.0, 0.3, 1.0, 2.0])
  axis = np.array([1.0, 0.0, 0.0])
  b = realscans.loop_field(z[:, None] * axis, np.zeros(3), axis, a)
  np.testing.assert_allclose(np.abs(b[:, 0]), 2 * np.pi * a ** 2 / (a ** 2 + z ** 2) ** 1.5, rtol=0.01)
  np.testing.assert_allclose(b[:, 1:], 0.0, atol=1e-9)


def _disc_stack(n=2, size=128, radius=30):
  yy, xx = np.mgrid[:size, :size]
  mask = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 <= radius ** 2
  return np.repeat(mask[None].astype(np.float32), n, axis=0), np.repeat(mask[None], n, axis=0)


@pytest.mark.parametrize("slice_index, coils", [(0, 1), (1, 8)])
def test_independent_model_noise_and_field_match_the_closed_forms(slice_index, coils):
  # Clean x = 1 on a disc, 0 outside. For N coils with complex noise σ per component and per coil,
  # E[y²] = x² b² + 2Nσ² exactly (Rician: N = 1; RSS: b² = Σ|s_k|²), at any SNR.
  clean, mask = _disc_stack()
  images, fields, sigmas, kinds = realscans.corrupt_independent(clean, mask, seed=3)
  assert kinds == ["poly_rician", "loop_coils"]
  y, b, s, m = (images[slice_index].astype(np.float64), fields[slice_index].astype(np.float64),
                float(sigmas[slice_index]), mask[slice_index])
  assert b[m].mean() == pytest.approx(1.0, rel=1e-5)      # fields are scaled to mean 1 on the object
  assert 0.01 <= s <= 0.08                                 # σ: fraction of the foreground mean (= 1)
  # ≈ 2,800 disc pixels: the mean of (y² − 2Nσ²) / b² has a std ≈ 0.004; 0.02 is ~5 std.
  assert np.mean((y[m] ** 2 - 2 * coils * s ** 2) / b[m] ** 2) == pytest.approx(1.0, abs=0.02)
  # Air: y / σ is χ with 2N degrees of freedom, mean √2 Γ(N + ½) / Γ(N); ≈ 13,000 pixels, 3 % is
  # ≥ 5 std of the sample mean.
  air = ~ndimage.binary_dilation(m, iterations=3)
  chi_mean = np.sqrt(2) * np.exp(special.gammaln(coils + 0.5) - special.gammaln(coils))
  assert y[air].mean() / s == pytest.approx(chi_mean, rel=0.03)


def test_independent_model_fields_are_realistic_and_the_oracle_removes_them():
  scan, = realscans.load(("dipy_aniso",), slices=4)
  images, fields, sigmas, _ = realscans.corrupt_independent(scan.clean, scan.mask, seed=0)
  for img, f, m in zip(images, fields, scan.mask):
    ratio = np.percentile(f[m], 98) / np.percentile(f[m], 2)
    assert 1.05 < ratio < 6.0, ratio
  ts = evaluate.TestSet("aniso", scan.clean, images, fields, scan.mask, sigmas)
  corrupted, oracle = evaluate.score(images, ts), evaluate.score(images / fields, ts)
  assert oracle["bias_residual"] < 0.5 * corrupted["bias_residual"]
  assert oracle["psnr"] > corrupted["psnr"]


def test_independent_model_is_deterministic_given_the_seed():
  clean, mask = _disc_stack()
  a = realscans.corrupt_independent(clean, mask, seed=5)
  b = realscans.corrupt_independent(clean, mask, seed=5)
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], realscans.corrupt_independent(clean, mask, seed=6)[0])


# --------------------------------------------------------------------------------------------
# `evaluate` on a small real-scan set
# --------------------------------------------------------------------------------------------
def test_evaluate_reports_every_method_on_the_real_scan_set(tmp_path):
  out = tmp_path / "ev"
  report = evaluate.evaluate(out, real_set="full", real_slices=2, real_groups=("epi",), log=lambda m: None)
  real = report["real_scans"]
  assert [(s["group"], s["corruption"]) for s in real["sets"]] == [("epi", "simulator"), ("epi", "independent")]
  for s in real["sets"]:
    rows = {r["method"]: r for r in s["rows"]}
    expected = {"corrupted", "oracle: corrupted / true field", evaluate.N4_LABEL, "N4 + NLM (dipy, Rician)",
                "restorer K = 1"}
    assert expected <= set(rows)
    if evaluate.optional("bm3d"):
      assert "N4 + BM3D" in rows
    # The oracle divides by the true field of either corruption model: less bias than the input.
    assert rows["oracle: corrupted / true field"]["bias_residual"] < rows["corrupted"]["bias_residual"]
    assert all(0 < r["ssim"] <= 1 and np.isfinite(r["psnr"]) for r in rows.values())
    # the do-no-harm count: slices whose SSIM is below the corrupted input's own
    assert rows["corrupted"]["slices_below_input"] == 0
    assert all(r["slices"] == 2 and 0 <= r["slices_below_input"] <= 2 for r in rows.values())
    if rows["N4 + NLM (dipy, Rician)"]["ssim"] < rows["corrupted"]["ssim"]:  # a lower mean needs a lower slice
      assert rows["N4 + NLM (dipy, Rician)"]["slices_below_input"] >= 1
  md = (out / "results.md").read_text()
  assert "real-scan validation set, independent corruption" in md and "heudiconv axasc35" in md
  assert "| slices below the input | groups below the input |" in md and "| 0 of 2 | 0 of 1 |" in md
  assert json.loads((out / "results.json").read_text())["real_scans"]["groups"][0]["key"] == "epi"
  assert (out / "real_scans.png").stat().st_size > 1000 and (out / "montage.png").is_file()


@pytest.mark.parametrize("kwargs, match", [({"real_set": "mosaic"}, "real-set"), ({"real_slices": 1}, "real-slices"),
                                           ({"real_groups": ("nope",)}, "known"),
                                           ({"real": False}, "nothing to evaluate")])
def test_evaluate_rejects_bad_real_set_options(tmp_path, kwargs, match):
  with pytest.raises(UserInputError, match=match):
    evaluate.evaluate(tmp_path / "ev", **kwargs)


def test_lesion_contrast_measure():
  from mri_jax import evaluate

  rng = np.random.default_rng(0)
  clean = np.zeros((2, 64, 64), np.float32)
  clean[:, 8:56, 8:56] = 1.0 + 0.05 * rng.standard_normal((2, 48, 48))
  mask = clean > 0.5
  lesioned, lesions = evaluate.insert_lesions(clean, mask, seed=0, per_slice=2)
  assert len(lesions) == 4 and {s for _, _, s in lesions} == {-1, 1}
  kept = evaluate.lesion_contrast_kept(lesioned, lesioned, lesions)
  assert kept == pytest.approx({"hypo": 1.0, "hyper": 1.0})
  from scipy import ndimage

  blurred = np.stack([ndimage.gaussian_filter(x, 2.0) for x in lesioned])
  k = evaluate.lesion_contrast_kept(blurred, lesioned, lesions)
  assert 0.2 < k["hypo"] < 0.9 and 0.2 < k["hyper"] < 0.9
  assert evaluate.lesion_contrast_kept(clean, lesioned, lesions)["hyper"] == pytest.approx(0.0, abs=0.1)


def test_montage_marks_a_method_that_did_not_run_and_shows_n4_beside_the_lesions(tmp_path):
  """A method missing from a set (dipy absent, say) gets an empty "not run" panel, and the lesion
  row shows N4 and N4 + NLM from the faithfulness run (they were black panels before)."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  rng = np.random.default_rng(0)
  clean = np.zeros((2, 48, 48), np.float32)
  clean[:, 8:40, 8:40] = 1.0
  noisy = clean + 0.05 * rng.standard_normal(clean.shape).astype(np.float32)
  ts = evaluate.TestSet("a set", clean, noisy, np.ones_like(clean), clean > 0.5, np.zeros(2, np.float32))
  imgs = {"corrupted": noisy, evaluate.N4_LABEL: noisy, "restorer K = 1": clean}  # no NLM
  extra = {"lesioned clean": clean, "lesioned corrupted": noisy, "restored K = 1": clean, "N4": 0.5 * noisy,
           "lesions": [(1, (20, 20), -1)]}
  drawn = {}
  real_close = plt.close

  def keep(fig=None):
    drawn["fig"] = fig
    real_close(fig)

  from unittest import mock

  with mock.patch.object(plt, "close", keep):
    evaluate.montage(tmp_path / "m.png", [(ts, imgs)], extra)
  assert (tmp_path / "m.png").stat().st_size > 1000
  axes = np.array(drawn["fig"].axes).reshape(2, 6)
  not_run = [[any(t.get_text() == "not run" for t in a.texts) for a in row] for row in axes]
  images = [[len(a.images) == 1 for a in row] for row in axes]
  assert not_run[0] == [False, False, True, False, False, False]  # the set's NLM
  assert not_run[1] == [False, False, True, False, False, False]  # the lesion row's NLM
  assert images[1][1]  # the lesion row's N4 is drawn


def test_evaluate_writes_the_comparison_table(tiny_dataset, tmp_path, capsys):
  data_dir, _ = tiny_dataset
  code, stdout, _ = run_cli(["evaluate", str(tmp_path / "ev"), "--data-dir", str(data_dir), "--dataset",
                          "mri_pairs/tiny", "--slices", "2", "--steps", "2", "--faithfulness", "--real-set", "dipy"],
                         capsys)
  assert code == 0
  report = json.loads((tmp_path / "ev" / "results.json").read_text())
  names = [r["method"] for s in report["sets"].values() for r in s["rows"]]
  for m in ("corrupted", "oracle: corrupted / true field", evaluate.N4_LABEL, "N4 + NLM (dipy, Rician)",
            "N4 + NLM (scikit-image)", "restorer K = 1", "restorer K = 2"):
    assert m in names
  assert len(report["sets"]) == 2  # synthetic held-out + the real dipy scan
  for s in report["sets"].values():
    rows = {r["method"]: r for r in s["rows"]}
    # The oracle removes the true field exactly: its bias residual is far below the corrupted input's.
    assert rows["oracle: corrupted / true field"]["bias_residual"] < 0.5 * rows["corrupted"]["bias_residual"]
    assert all(np.isfinite(r["ssim"]) and np.isfinite(r["psnr"]) for r in s["rows"])
  f = report["faithfulness"]
  assert f["lesions"] > 0 and np.isfinite(f["seed_std_over_sigma"])
  assert (tmp_path / "ev" / "montage.png").stat().st_size > 0 and "| restorer K = 1 |" in stdout


def test_dipy_nlm_baseline_denoises_a_slice_without_losing_intensity():
  """The classic baseline must be a fair one: dipy's 3-D nlmeans on a 2-D slice keeps the
  foreground's mean and lowers the error against the clean image (the depth-1 call it replaces
  raised the error here, and lost 7–12 % of the foreground mean on the real scans)."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:64, :64]
  clean = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 24 ** 2, 1.0 + 0.3 * (xx > 32), 0.0)
  noisy = np.abs(clean + 0.05 * (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)))
  out, seconds = evaluate.nlm_dipy(noisy[None].astype(np.float32))
  fg = clean > 0
  assert out.shape == (1, 64, 64) and seconds > 0
  assert out[0][fg].mean() == pytest.approx(noisy[fg].mean(), rel=0.02)
  assert np.sqrt(np.mean((out[0] - clean)[fg] ** 2)) < 0.85 * np.sqrt(np.mean((noisy - clean)[fg] ** 2))
