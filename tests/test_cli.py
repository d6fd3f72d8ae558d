"""`mri-jax simulate` end to end: header/affine kept, determinism, one-line errors."""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import run_cli, write_nifti


@pytest.fixture
def volume(tmp_path):
  rng = np.random.default_rng(0)
  data = (rng.uniform(0, 100, (20, 18, 12))).astype(np.float32)
  affine = np.array([[0, -1.2, 0, 10], [0.9, 0, 0, -5], [0, 0, 2.0, 3], [0, 0, 0, 1]])
  return write_nifti(tmp_path / "vol.nii.gz", data, affine)


def test_simulate_keeps_header_affine_and_is_byte_deterministic(volume, tmp_path, capsys):
  out1, out2, out3 = (tmp_path / f"o{i}.nii.gz" for i in range(3))
  field = tmp_path / "field.nii.gz"
  before = volume.read_bytes()
  assert run_cli(["simulate", str(volume), str(out1), "--seed", "3", "--save-field", str(field)], capsys)[0] == 0
  assert run_cli(["simulate", str(volume), str(out2), "--seed", "3"], capsys)[0] == 0
  assert run_cli(["simulate", str(volume), str(out3), "--seed", "4"], capsys)[0] == 0
  assert volume.read_bytes() == before  # input untouched
  assert out1.read_bytes() == out2.read_bytes()
  assert out1.read_bytes() != out3.read_bytes()
  src, res, fld = (nib.load(str(p)) for p in (volume, out1, field))
  np.testing.assert_array_equal(res.affine, src.affine)
  assert res.shape == src.shape and res.get_data_dtype() == np.float32
  assert res.header.get_zooms() == src.header.get_zooms()
  assert res.header["qform_code"] == src.header["qform_code"] and res.header["sform_code"] == src.header["sform_code"]
  data, bias = res.get_fdata(), fld.get_fdata()
  assert np.all(np.isfinite(data)) and np.all(bias > 0)
  # The corrupted image follows the clean one through the field: correlation stays high.
  assert np.corrcoef((data / bias).ravel(), src.get_fdata().ravel())[0, 1] > 0.9
  assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_simulate_2d_stored_as_xy1_is_written_back_as_xy1(tmp_path, capsys):
  src = write_nifti(tmp_path / "slice.nii", np.random.default_rng(1).uniform(0, 1, (32, 40, 1)).astype(np.float32))
  out = tmp_path / "slice_out.nii"
  code, stdout, _ = run_cli(["simulate", str(src), str(out), "--coils", "1", "--noise", "0.05"], capsys)
  assert code == 0 and "shape [32, 40]" in stdout
  assert nib.load(str(out)).shape == (32, 40, 1)


def _bad_inputs(tmp_path):
  text = tmp_path / "notes.nii.gz"
  text.write_text("not an image")
  four_d = write_nifti(tmp_path / "fmri.nii.gz", np.ones((8, 8, 8, 3), np.float32))
  nan = np.ones((8, 8, 8), np.float32)
  nan[2, 2, 2] = np.nan
  nan_path = write_nifti(tmp_path / "nan.nii.gz", nan)
  zeros = write_nifti(tmp_path / "zeros.nii.gz", np.zeros((8, 8, 8), np.float32))
  png = tmp_path / "image.png"
  png.write_bytes(b"\x89PNG")
  return {
      "missing": ([str(tmp_path / "nope.nii.gz")], "does not exist"),
      "not nifti": ([str(text)], "cannot read"),
      "wrong suffix": ([str(png)], "must be a NIfTI"),
      "4d": ([str(four_d)], "only 2-D or 3-D"),
      "nan": ([str(nan_path)], "NaN/Inf"),
      "all zero": ([str(zeros)], "no positive voxel"),
  }


@pytest.mark.parametrize("case", ["missing", "not nifti", "wrong suffix", "4d", "nan", "all zero"])
def test_bad_input_gives_one_line_and_writes_nothing(case, tmp_path, capsys):
  args, message = _bad_inputs(tmp_path)[case]
  out = tmp_path / "out.nii.gz"
  code, _, err = run_cli(["simulate", *args, str(out)], capsys)
  assert code == 2
  assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
  assert not out.exists()


@pytest.mark.parametrize("options,message", [
    (["--coils", "0"], "--coils"), (["--coils", "65"], "--coils"), (["--noise", "-0.1"], "--noise"),
    (["--bias", "5"], "--bias"), (["--rings", "3"], "--rings"), (["--correlation", "1"], "--correlation"),
    (["--seed", "-1"], "--seed"), (["--coils", "two"], "invalid int"),
    (["--coil-model", "birdcage"], "invalid choice"), (["--receive-strength", "2"], "--receive-strength"),
])
def test_bad_options_give_one_line_and_write_nothing(options, message, volume, tmp_path, capsys):
  out = tmp_path / "out.nii.gz"
  try:
    code, _, err = run_cli(["simulate", str(volume), str(out), *options], capsys)
  except SystemExit as exc:  # argparse type errors exit through the parser
    code, err = exc.code, capsys.readouterr().err
  assert code == 2 and message in err and len(err.strip().splitlines()) == 1
  assert not out.exists()


def test_output_rules(volume, tmp_path, capsys):
  code, _, err = run_cli(["simulate", str(volume), str(volume)], capsys)
  assert code == 2 and "is the input" in err
  out = tmp_path / "exists.nii.gz"
  out.write_bytes(b"keep me")
  code, _, err = run_cli(["simulate", str(volume), str(out)], capsys)
  assert code == 2 and "--overwrite" in err and out.read_bytes() == b"keep me"
  assert run_cli(["simulate", str(volume), str(out), "--overwrite"], capsys)[0] == 0
  code, _, err = run_cli(["simulate", str(volume), str(tmp_path / "no_dir" / "o.nii.gz")], capsys)
  assert code == 2 and "does not exist" in err


def test_console_script_reports_errors_without_traceback(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "mri_jax", "simulate", str(tmp_path / "x.nii.gz"),
                         str(tmp_path / "y.nii.gz")], capture_output=True, text=True)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
  help_text = subprocess.run([sys.executable, "-m", "mri_jax", "simulate", "--help"], capture_output=True,
                             text=True)
  assert help_text.returncode == 0 and "examples:" in help_text.stdout


def test_fast_with_checkpoint_or_without_n4_is_one_line_error(tmp_path, capsys):
  src = tmp_path / "in.nii.gz"
  for argv in (["restore", str(src), str(tmp_path / "out.nii.gz"), "--fast", "--checkpoint", str(tmp_path)],
               ["demo", str(tmp_path / "demo"), "--fast", "--checkpoint", str(tmp_path)]):
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and "--fast and --checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "out.nii.gz").exists() and not (tmp_path / "demo").exists()
  code, _, err = run_cli(["restore", str(src), str(tmp_path / "out.nii.gz"), "--fast", "--n4", "none"], capsys)
  assert code == 2 and "--fast needs N4" in err and not (tmp_path / "out.nii.gz").exists()


def test_restore_fast_uses_the_shipped_fast_weights(tmp_path, capsys):
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:64, :64]
  disc = 100.0 * (((yy - 32) ** 2 + (xx - 30) ** 2) < 22 ** 2) * (1 + 0.3 * xx / 64)
  img = np.abs(disc + rng.normal(0, 5, disc.shape) + 1j * rng.normal(0, 5, disc.shape))
  src = write_nifti(tmp_path / "disc.nii.gz", img, np.eye(4))
  out = tmp_path / "disc_fast.nii.gz"
  code, stdout, err = run_cli(["restore", str(src), str(out), "--fast", "--quiet"], capsys)
  assert code == 0, err
  assert "weights/fast" in stdout and out.is_file()
  r = np.asarray(nib.load(str(out)).dataobj)
  fg = disc > 0
  assert np.all(np.isfinite(r)) and 0.8 < r[fg].mean() / img[fg].mean() < 1.25
