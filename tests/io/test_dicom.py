"""DICOM input: affine and data against dcm2niix and SimpleITK's NIfTI writer, on generated series
and on real MR DICOMs shipped in heudiconv's wheel; the refusals (several series, mosaics, phase
images, repeated positions); `mri-jax restore` from a DICOM folder."""

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mri_jax.errors import UserInputError
from mri_jax.io import dicom
from tests.conftest import run_cli, write_dicom_series


def _heudiconv_data() -> Path:
  import heudiconv

  return Path(heudiconv.__file__).parent / "tests" / "data"


def _dcm2niix(folder: Path, out: Path) -> nib.Nifti1Image:
  """dcm2niix's NIfTI of the one series in `folder` (the reference conversion)."""
  exe = shutil.which("dcm2niix")
  assert exe, "dcm2niix is in the test extra (pip install dcm2niix)"
  out.mkdir(parents=True, exist_ok=True)
  proc = subprocess.run([exe, "-z", "y", "-o", str(out), "-f", "ref", str(folder)], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  files = sorted(out.glob("ref*.nii.gz"))
  assert len(files) == 1, [f.name for f in files]
  return nib.load(str(files[0]))


def _same_scan(ours: nib.Nifti1Image, ref: nib.Nifti1Image, atol=1e-4):
  """Same voxels at the same world positions: both reoriented to the closest RAS axes, then equal
  affines and data."""
  a, b = nib.as_closest_canonical(ours), nib.as_closest_canonical(ref)
  assert a.shape[:3] == b.shape[:3]
  np.testing.assert_allclose(a.affine, b.affine, atol=atol)
  np.testing.assert_array_equal(np.asarray(a.dataobj, np.float32).squeeze(), np.asarray(b.dataobj, np.float32).squeeze())


@pytest.fixture(scope="module")
def volume():
  rng = np.random.default_rng(0)
  return (rng.random((40, 48, 12)) * 1000).astype(np.int16)


def test_generated_oblique_series_matches_dcm2niix_and_simpleitk(volume, tmp_path):
  import SimpleITK as sitk

  folder = write_dicom_series(tmp_path / "series", volume)
  img = dicom.read_series(folder)
  np.testing.assert_array_equal(img.data, volume)  # ITK index order (i, j, k), values kept
  assert img.spacing == pytest.approx((0.9, 1.1, 3.0))
  _same_scan(img.image, _dcm2niix(folder, tmp_path / "d2n"))
  # SimpleITK's own NIfTI writer makes the same LPS → RAS conversion
  reader = sitk.ImageSeriesReader()
  reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
  sitk.WriteImage(reader.Execute(), str(tmp_path / "sitk.nii.gz"))
  _same_scan(img.image, nib.load(str(tmp_path / "sitk.nii.gz")))


@pytest.mark.parametrize("name", ["01-anat-scout", "Phoenix/01+AA"])
def test_real_heudiconv_dicoms_match_dcm2niix(name, tmp_path):
  folder = _heudiconv_data() / name
  img = dicom.read_series(folder)
  assert img.data.ndim == 2 and img.data.shape == (160, 160)
  _same_scan(img.image, _dcm2niix(folder, tmp_path / "d2n"))  # incl. the single slice's thickness


def test_refusals(volume, tmp_path):
  data = _heudiconv_data()
  with pytest.raises(UserInputError, match="Siemens mosaic"):
    dicom.read_series(data / "b0dwiForFmap")
  with pytest.raises(UserInputError, match="phase image"):
    dicom.read_series(data / "01-fmap_acq-3mm")
  with pytest.raises(UserInputError, match="no DICOM series"):
    dicom.read_series(tmp_path)
  two = tmp_path / "two"
  write_dicom_series(two, volume[..., :4], uid="1.2.826.0.1.3680043.2.1125.1", number=3)
  write_dicom_series(two, volume[..., 4:10] // 2, uid="1.2.826.0.1.3680043.2.1125.2", number=4, description="T2")
  with pytest.raises(UserInputError, match="holds 2 DICOM series.*--series"):
    dicom.read_series(two)
  picked = dicom.read_series(two, "1.2.826.0.1.3680043.2.1125.2")
  np.testing.assert_array_equal(picked.data, volume[..., 4:10] // 2)
  with pytest.raises(UserInputError, match="is not in"):
    dicom.read_series(two, "1.2.3")
  rep = write_dicom_series(tmp_path / "rep", volume[..., :4], repeat_position=True)
  with pytest.raises(UserInputError, match="repeat a slice position"):
    dicom.read_series(rep)
  real = write_dicom_series(tmp_path / "real", volume[..., :4], image_type="ORIGINAL\\PRIMARY\\R\\ND")
  with pytest.raises(UserInputError, match="real-part image"):
    dicom.read_series(real)


def test_cli_restores_a_dicom_folder_into_nifti_with_its_affine(tmp_path, capsys):
  from mri_jax.data import pairs

  t = np.asarray(pairs.template_tissues(4)[1])  # grey-matter map of the MNI152 at 4 mm
  z = int(np.argmax(t.sum(axis=(0, 1))))
  vol = (1000 * t[..., z - 2:z + 2] + 50).astype(np.int16)
  folder = write_dicom_series(tmp_path / "series", vol)
  before = {p.name: p.read_bytes() for p in folder.iterdir()}
  out = tmp_path / "restored.nii.gz"
  code, stdout, err = run_cli(["restore", str(folder), str(out), "--quiet"], capsys)
  assert code == 0, err
  res = nib.load(str(out))
  ref = dicom.read_series(folder)
  np.testing.assert_allclose(res.affine, ref.image.affine, atol=1e-5)
  assert res.shape == vol.shape and np.all(np.isfinite(res.get_fdata()))
  assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # inputs untouched
  code, _, err = run_cli(["restore", str(folder), str(tmp_path / "x.nii.gz"), "--series", "9.9.9"], capsys)
  assert code == 2 and "is not in" in err and not (tmp_path / "x.nii.gz").exists()
