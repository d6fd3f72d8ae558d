"""N4: the JAX backend against SimpleITK's on simulator-corrupted anatomy, transforms, failure modes."""

import functools

import chex
import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from mri_jax import cli, file_jobs, n4
from mri_jax.data import anatomy
from mri_jax.n4 import bspline


def _corr(a, b, mask):
  x, y = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
  return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


@functools.lru_cache(maxsize=None)
def _anatomy():
  return anatomy.load_mni152()


def _corrupt(clean, wm, seed, **kw):
  cfg = file_jobs.corruption_settings(**{"coils": 8, "noise": 0.03, "bias": 0.3, **kw})
  r = file_jobs.simulate_array(clean, seed=seed, settings=cfg, reference_mask=wm)
  return np.asarray(r.image), np.log(np.asarray(r.bias))


@pytest.mark.parametrize("regime", [dict(), dict(coils=1, receive_strength=0.0, b1=0.0, bias=0.5)],
                         ids=["coils", "polynomial"])
def test_agrees_with_simpleitk_and_with_the_true_field_on_a_slice(regime):
  a = _anatomy()
  clean, wm, brain = a.t1[:, :, 90], a.wm[:, :, 90] > 0.9, a.mask[:, :, 90]
  img, true = _corrupt(clean, wm, 3, **regime)
  mask = np.asarray(n4.otsu_mask(img))
  ref = n4.n4_sitk(img, mask)
  res = n4.n4(img, mask)
  lj = np.asarray(res.log_field)
  # Single noise draws vary (polynomial regime, seeds 0–4: 0.944–0.996), so the agreement with
  # SimpleITK is asserted on the median of three draws.
  agreement = [_corr(lj, ref.log_field, brain)]
  for seed in (2, 4):
    other, _ = _corrupt(clean, wm, seed, **regime)
    other_mask = np.asarray(n4.otsu_mask(other))
    agreement.append(_corr(np.asarray(n4.n4(other, other_mask).log_field),
                           n4.n4_sitk(other, other_mask).log_field, brain))
  assert np.median(agreement) >= 0.95
  # One image: the two estimates differ by which voxels the shrunk grids sample, so allow 0.02 here;
  # benchmarks/n4.py compares the averages over 64 slices and 6 volumes.
  assert _corr(lj, true, brain) >= _corr(ref.log_field, true, brain) - 0.02
  cv = lambda x: x[wm].std() / x[wm].mean()
  assert cv(np.asarray(res.corrected)) < 0.75 * cv(img)
  assert cv(np.asarray(res.corrected)) <= 1.1 * cv(ref.corrected)
  np.testing.assert_allclose(np.asarray(res.corrected) * np.exp(lj), img, rtol=1e-4, atol=1e-4)


def test_agrees_with_simpleitk_on_a_volume_with_anisotropic_voxels():
  a = _anatomy()
  sl = (slice(None, None, 2), slice(None, None, 2), slice(None, None, 3))  # 2 × 2 × 3 mm voxels
  clean, wm, brain = a.t1[sl], a.wm[sl] > 0.9, a.mask[sl]
  img, true = _corrupt(clean, wm, 0)
  settings = n4.N4Settings(shrink=2, spline_distance=60.0, iterations=(50, 50, 50))
  spacing = (2.0, 2.0, 3.0)
  p = n4.plan(img.shape, settings, spacing)
  assert p.control_points == tuple(int(np.ceil((n - 1) * s / 60.0)) + 3 for n, s in zip(img.shape, spacing))
  ref = n4.n4_sitk(img, spacing=spacing, settings=settings)
  res = n4.n4(img, spacing=spacing, settings=settings)
  np.testing.assert_array_equal(np.asarray(res.mask), ref.mask)  # the same Otsu mask reaches both
  lj = np.asarray(res.log_field)
  assert _corr(lj, ref.log_field, brain) >= 0.95
  assert _corr(lj, true, brain) >= _corr(ref.log_field, true, brain) - 0.02


@pytest.mark.parametrize("shape", [(5, 6), (12, 10), (20, 20, 3)])
def test_matches_simpleitk_numerically_without_shrinking(shape):
  # Same grid for both (shrink 1): the algorithms should give the same field up to float error.
  rng = np.random.default_rng(1)
  x = (5.0 + rng.random(shape)).astype(np.float32)
  x *= np.exp(np.linspace(-0.3, 0.3, shape[0]))[(slice(None),) + (None,) * (len(shape) - 1)]
  mask = np.ones(shape, bool)
  ref = n4.n4_sitk(x, mask, settings=n4.N4Settings(shrink=1))
  res = n4.n4(x, mask, settings=n4.N4Settings(shrink=1))
  np.testing.assert_allclose(np.asarray(res.log_field), ref.log_field, atol=5e-3)  # range ≈ 0.7


def test_batch_equals_loop_and_is_jit_composable():
  rng = np.random.default_rng(0)
  base = np.zeros((3, 40, 36), np.float32)
  base[:, 8:32, 6:30] = 100.0 + rng.normal(0, 3, (3, 24, 24))
  field = np.exp(0.3 * np.linspace(-1, 1, 40))[None, :, None] * np.exp(rng.uniform(-.2, .2, (3, 1, 1)))
  imgs = np.abs(base * field + rng.normal(0, 1, base.shape)).astype(np.float32)
  settings = n4.N4Settings(shrink=2, iterations=(10, 10))
  batch = n4.n4_batch(imgs, settings=settings)
  for k in range(3):
    one = n4.n4(imgs[k], settings=settings)
    np.testing.assert_allclose(np.asarray(batch.log_field[k]), np.asarray(one.log_field), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(batch.iterations[k]), np.asarray(one.iterations))
  p = n4.plan(imgs.shape[1:], settings)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def user_fn(img):  # the N4 body inside someone else's jit
    return jnp.mean(n4.n4_traced(img, None, p, settings).corrected)

  user_fn(jnp.asarray(imgs[0]))
  user_fn(jnp.asarray(imgs[1]))  # same shape, new values: no retrace
  np.testing.assert_allclose(float(user_fn(jnp.asarray(imgs[2]))),
                             float(np.mean(np.asarray(batch.corrected[2]))), rtol=1e-5)


def test_gradients_are_finite_and_match_finite_differences():
  rng = np.random.default_rng(2)
  img = (50.0 + rng.normal(0, 2, (24, 24))).astype(np.float32)
  img *= np.exp(0.2 * np.linspace(-1, 1, 24))[:, None]
  mask = jnp.ones(img.shape, bool)
  settings = n4.N4Settings(shrink=1, iterations=(3, 3), convergence=0.0)
  p = n4.plan(img.shape, settings)
  weights = jnp.asarray(rng.normal(size=img.shape).astype(np.float32))
  loss = jax.jit(lambda scale: jnp.sum(weights * n4.n4_traced(jnp.asarray(img) * jnp.exp(
      scale * jnp.linspace(-1, 1, 24))[:, None], mask, p, settings).log_field))
  g = float(jax.grad(loss)(0.1))
  eps = 1e-2
  fd = (float(loss(0.1 + eps)) - float(loss(0.1 - eps))) / (2 * eps)
  assert np.isfinite(g)
  assert abs(g - fd) <= 0.05 * abs(fd) + 1e-3


def test_sharpening_pulls_a_blurred_two_class_histogram_apart():
  rng = np.random.default_rng(0)
  truth = np.where(rng.random(20000) < 0.5, 0.0, 0.4).astype(np.float32)
  blurred = truth + rng.normal(0, 0.06, truth.shape).astype(np.float32)
  sharp = np.asarray(n4.sharpen(jnp.asarray(blurred), jnp.ones_like(blurred), bins=200, fwhm=0.15,
                                wiener=0.01))
  for cls in (0.0, 0.4):
    sel = truth == cls
    assert sharp[sel].std() < blurred[sel].std()
  assert abs((sharp[truth == 0.4].mean() - sharp[truth == 0].mean()) - 0.4) < 0.05


def test_bspline_refinement_is_exact_and_basis_is_a_partition_of_unity():
  rng = np.random.default_rng(0)
  full = (37, 29)
  coarse = jnp.asarray(rng.normal(size=(5, 6)).astype(np.float32))
  fine = bspline.refine(coarse, full, (7, 9))
  pos = [np.arange(n, dtype=float) for n in full]
  np.testing.assert_allclose(np.asarray(bspline.evaluate_on(fine, pos, full)),
                             np.asarray(bspline.evaluate_on(coarse, pos, full)), atol=1e-5)
  b = bspline.basis_matrix(np.linspace(0, 36, 101), 37, 8)
  np.testing.assert_allclose(b.sum(axis=1), 1.0, atol=1e-12)


def test_otsu_threshold_separates_two_classes():
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.normal(10, 2, 5000), rng.normal(100, 10, 3000)]).astype(np.float32)
  t = float(n4.jax_n4.otsu_threshold(jnp.asarray(x)))
  wrong = np.sum(x[:5000] > t) + np.sum(x[5000:] <= t)
  assert wrong <= 0.005 * x.size


def test_non_positive_and_constant_images():
  rng = np.random.default_rng(0)
  img = (100.0 + rng.normal(0, 3, (32, 32))).astype(np.float32) * np.exp(0.3 * np.linspace(-1, 1, 32))[:, None]
  with_holes = img.copy()
  with_holes[::5, ::7] = -4.0
  with_holes[3, :] = 0.0
  mask = np.ones(img.shape, bool)
  for backend in n4.BACKENDS:
    res = n4.correct(with_holes, mask, backend=backend, settings=n4.N4Settings(shrink=1))
    assert not np.asarray(res.mask)[with_holes <= 0].any()
    assert np.all(np.isfinite(np.asarray(res.log_field)))
    np.testing.assert_allclose(np.asarray(res.corrected)[with_holes <= 0] *
                               np.exp(np.asarray(res.log_field))[with_holes <= 0],
                               with_holes[with_holes <= 0], atol=1e-4)  # values kept, sign included
  const = n4.n4(np.full((16, 16), 7.0, np.float32))
  assert np.all(np.asarray(const.log_field) == 0.0)
  np.testing.assert_allclose(np.asarray(const.corrected), 7.0)


@pytest.mark.parametrize("bad, message", [
    (dict(shrink=0), "shrink"), (dict(iterations=()), "iterations"), (dict(iterations=(0, 0)), "iterations"),
    (dict(control_points=3), "control points"), (dict(bins=4), "bins"), (dict(fwhm=0.0), "FWHM"),
    (dict(wiener=-1.0), "Wiener"), (dict(convergence=1.5), "convergence"),
    (dict(spline_distance=-5.0), "spline distance")])
def test_settings_are_validated(bad, message):
  with pytest.raises(ValueError, match=message):
    n4.N4Settings(**bad)


def test_plan_lowers_shrink_on_short_axes_and_refuses_tiny_images():
  p = n4.plan((256, 256, 20), n4.N4Settings(shrink=4))
  assert p.shrink == (4, 4, 1) and p.shrunk_shape == (64, 64, 20)
  with pytest.raises(ValueError, match="too small"):
    n4.plan((1, 30), n4.N4Settings())
  # min_shrunk (restore's rule: the fit keeps ≥ 64 voxels per axis): 256 keeps shrink 4, 128 gets
  # 2, 64 and 58 get 1
  p = n4.plan((256, 128, 58), n4.N4Settings(shrink=4, min_shrunk=64))
  assert p.shrink == (4, 2, 1) and p.shrunk_shape == (64, 64, 58)
  with pytest.raises(ValueError, match="min_shrunk"):
    n4.N4Settings(min_shrunk=0)


# --------------------------------------------------------------------------------------------
# mri-jax n4
# --------------------------------------------------------------------------------------------
def _slice_file(path, affine=None):
  a = _anatomy()
  x = a.t1[::2, ::2, 90] * np.exp(np.linspace(-0.4, 0.4, a.t1[::2].shape[0]))[:, None]
  affine = np.array([[0, -2.0, 0, 10], [2.0, 0, 0, -5], [0, 0, 1.0, 3], [0, 0, 0, 1]]) if affine is None else affine
  img = nib.Nifti1Image(x[:, :, None].astype(np.float32), affine)
  img.header["descrip"] = b"test input"
  nib.save(img, str(path))
  return path


def _run(argv, capsys):
  try:
    code = cli.main(argv)
  except SystemExit as exc:  # argparse option errors exit through the parser
    code = exc.code
  cap = capsys.readouterr()
  return code, cap.out, cap.err


@pytest.mark.parametrize("backend", n4.BACKENDS)
def test_cli_n4_keeps_header_and_writes_the_field(backend, tmp_path, capsys):
  src = _slice_file(tmp_path / "in.nii.gz")
  before = src.read_bytes()
  out, field = tmp_path / "out.nii.gz", tmp_path / "field.nii.gz"
  code, stdout, _ = _run(["n4", str(src), str(out), "--backend", backend, "--save-field", str(field),
                          "--iterations", "20,20,20"], capsys)
  assert code == 0 and "wrote" in stdout
  assert src.read_bytes() == before
  inp, o, f = nib.load(str(src)), nib.load(str(out)), nib.load(str(field))
  assert o.shape == inp.shape == f.shape
  np.testing.assert_allclose(o.affine, inp.affine)
  assert int(o.header["qform_code"]) == int(inp.header["qform_code"])
  np.testing.assert_allclose(o.get_fdata() * f.get_fdata(), inp.get_fdata(), rtol=1e-4, atol=1e-3)
  x = inp.get_fdata()[:, :, 0]
  fg = x > np.percentile(x, 60)
  assert np.std(np.log(f.get_fdata()[:, :, 0][fg])) > 0.1  # a real field was found (0.8 log range input)
  if backend == "jax":  # --min-shrunk reaches the plan: the 91×109 slice is fitted unshrunk with 64
    code, stdout, _ = _run(["n4", str(src), str(tmp_path / "o64.nii.gz"), "--min-shrunk", "64",
                            "--iterations", "20,20,20"], capsys)
    assert code == 0 and "shrink [1, 1]" in stdout.replace("(", "[").replace(")", "]"), stdout


def test_cli_n4_one_line_errors_and_nothing_written(tmp_path, capsys):
  src = _slice_file(tmp_path / "in.nii.gz")
  const = tmp_path / "const.nii.gz"
  nib.save(nib.Nifti1Image(np.full((30, 30, 10), 5.0, np.float32), np.eye(4)), str(const))
  neg = tmp_path / "neg.nii.gz"
  nib.save(nib.Nifti1Image(-np.ones((30, 30), np.float32), np.eye(4)), str(neg))
  bad_mask = tmp_path / "mask.nii.gz"
  nib.save(nib.Nifti1Image(np.ones((7, 7), np.float32), np.eye(4)), str(bad_mask))
  empty_mask = tmp_path / "empty.nii.gz"
  nib.save(nib.Nifti1Image(np.zeros(nib.load(str(src)).shape, np.float32), np.eye(4)), str(empty_mask))
  out = tmp_path / "out.nii.gz"
  cases = [
      ([str(const), str(out)], "constant"),
      ([str(neg), str(out)], "no positive voxel"),
      ([str(src), str(out), "--mask", str(bad_mask)], "shape"),
      ([str(src), str(out), "--mask", str(empty_mask)], "mask holds 0"),
      ([str(src), str(out), "--iterations", "5,x"], "comma-separated"),
      ([str(src), str(out), "--shrink", "0"], "shrink"),
      ([str(src), str(out), "--min-shrunk", "0"], "min_shrunk"),
      ([str(src), str(out), "--backend", "ants"], "invalid choice"),
      ([str(src), str(out), "--control-points", "2"], "control points"),
      ([str(tmp_path / "missing.nii.gz"), str(out)], "does not exist"),
      ([str(src), str(src)], "input file"),
  ]
  for argv, message in cases:
    code, _, err = _run(["n4", *argv], capsys)
    assert code == 2, argv
    lines = [line for line in err.strip().splitlines() if not line.startswith("running")]
    assert len(lines) == 1 and message in lines[0], (argv, err)
    assert not out.exists()
