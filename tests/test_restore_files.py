"""`mri-jax restore IN [IN ...] --output-dir D`: folders, NIfTI and DICOM inputs in one run, one
line per file, one failure not stopping the others, names, and the argument errors."""

import nibabel as nib
import numpy as np
import pytest

from mri_jax import restore_files
from mri_jax.errors import UserInputError
from tests.conftest import run_cli, write_dicom_series, write_nifti


@pytest.fixture(scope="module")
def images():
  from mri_jax.data import pairs

  t = np.asarray(pairs.template_tissues(4)[1])
  z = int(np.argmax(t.sum(axis=(0, 1))))
  rng = np.random.default_rng(0)
  a = 100 * t[..., z] + 5 + rng.normal(0, 2, t.shape[:2])
  return np.abs(a).astype(np.float32), np.abs(a[4:-4, 2:] * 3).astype(np.float32), t, z


def test_many_inputs_one_failure_does_not_stop_the_others(images, tmp_path, capsys):
  a, b, t, z = images
  ind = tmp_path / "in"
  ind.mkdir()
  write_nifti(ind / "a.nii.gz", a)
  write_nifti(ind / "b.nii", b)
  (ind / "broken.nii.gz").write_bytes(b"not a nifti")
  series = write_dicom_series(tmp_path / "dicom", (1000 * t[..., z - 1:z + 2] + 50).astype(np.int16))
  single = write_nifti(tmp_path / "single.nii.gz", a[::-1])
  before = {p: p.read_bytes() for p in [*ind.iterdir(), single]}
  out = tmp_path / "out"
  code, stdout, err = run_cli(["restore", str(ind), str(series), str(single), "--output-dir", str(out), "--quiet"],
                              capsys)
  assert code == 2  # one input failed
  assert "failed" in err and "broken.nii.gz" in err and "Traceback" not in err
  names = sorted(p.name for p in out.iterdir())
  assert names == ["a.nii.gz", "b.nii", "dicom_s3_T1_test.nii.gz", "single.nii.gz"]  # nothing half-written
  assert stdout.count("wrote ") == 4 and "restored 4 of 5 file(s)" in stdout
  for name, src in (("a.nii.gz", a), ("b.nii", b), ("single.nii.gz", a[::-1])):
    r = nib.load(str(out / name))
    assert r.shape == src.shape and np.all(np.isfinite(r.get_fdata()))
  assert nib.load(str(out / "dicom_s3_T1_test.nii.gz")).shape == (50, 59, 3)
  assert all(p.read_bytes() == data for p, data in before.items())  # inputs untouched
  # a second run: outputs exist → every file fails (exit 2), nothing replaced; --overwrite replaces them
  stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
  code, _, err = run_cli(["restore", str(single), "-o", str(out), "--quiet"], capsys)
  assert code == 2 and "already exists" in err
  assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp
  code, _, _ = run_cli(["restore", str(single), "-o", str(out), "--quiet", "--overwrite"], capsys)
  assert code == 0


@pytest.mark.parametrize("argv, message", [
    (["restore", "{d}/a.nii.gz", "{d}/b.nii.gz", "{d}/c.nii.gz"], "several INPUTs with --output-dir"),
    (["restore", "{d}/a.nii.gz"], "give INPUT OUTPUT"),
    (["restore", "{d}/a.nii.gz", "{d}/sub/a.nii.gz", "-o", "{d}/o"], "would both be written as 'a.nii.gz'"),
    (["restore", "{d}/empty", "-o", "{d}/o"], "holds no NIfTI file and no DICOM series"),
    (["restore", "{d}/missing.nii.gz", "-o", "{d}/o"], "does not exist"),
    (["restore", "{d}/notes.txt", "-o", "{d}/o"], "neither NIfTI"),
    (["restore", "{d}/a.nii.gz", "-o", "{d}/o", "--save-field", "{d}/f.nii.gz"], "--save-field"),
    (["restore", "{d}/a.nii.gz", "{d}/sub/a.nii.gz", "-o", "{d}/o", "--series", "1.2"], "--series picks"),
    (["restore", "{d}/a.nii.gz", "-o", "{d}/notes.txt"], "exists and is not a folder"),
])
def test_argument_errors_are_one_line_and_write_nothing(images, tmp_path, capsys, argv, message):
  a = images[0]
  write_nifti(tmp_path / "a.nii.gz", a)
  (tmp_path / "sub").mkdir()
  write_nifti(tmp_path / "sub" / "a.nii.gz", a)
  (tmp_path / "empty").mkdir()
  (tmp_path / "notes.txt").write_text("hello")
  before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
  code, _, err = run_cli([x.format(d=tmp_path) for x in argv], capsys)
  assert code == 2 and message in err, err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
  assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_expand_inputs_names_dicom_series_and_skips_subfolders(images, tmp_path):
  a, _, t, z = images
  write_nifti(tmp_path / "x.nii.gz", a)
  vol = (1000 * t[..., z - 1:z + 2]).astype(np.int16)
  write_dicom_series(tmp_path, vol, uid="1.2.826.0.1.3680043.2.1125.5", number=7, description="FLAIR ax")
  write_nifti(tmp_path / "deeper" / "y.nii.gz", a) if (tmp_path / "deeper").mkdir() is None else None
  jobs = restore_files.expand_inputs([tmp_path])
  assert [j.name for j in jobs] == ["x.nii.gz", f"{tmp_path.name}_s7_FLAIR_ax.nii.gz"]
  assert jobs[1].series == "1.2.826.0.1.3680043.2.1125.5"
  with pytest.raises(UserInputError, match="--series picks"):
    restore_files.expand_inputs([tmp_path / "x.nii.gz"], series="1.2")
