"""DICOM input: a folder holding one (or several) DICOM series, or one DICOM file, read with
SimpleITK's GDCM series reader into a NIfTI image (RAS affine) that `restore` treats as any NIfTI.

Orientation: DICOM (and ITK) positions are in LPS patient coordinates; NIfTI's are RAS. With the
ITK image's direction D, spacing s and origin o, voxel (i, j, k) sits at LPS o + D·diag(s)·(i, j, k),
so the NIfTI affine is diag(−1, −1, 1) · [D·diag(s) | o] — the conversion SimpleITK's own NIfTI
writer and dcm2niix make (tests/io/test_dicom.py checks both). The array is in ITK index order
(i, j, k): SimpleITK's (k, j, i) array transposed.

Refused with a one-line error (never a silently wrong image): no DICOM series in the folder, several
series without `series=` (the error lists them), an unknown series UID, Siemens mosaics (several
slices tiled in one image: convert them with dcm2niix first), phase / real / imaginary images
(ImageType), repeated images at one slice position,
colour images, non-finite data and anything GDCM cannot read.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from mri_jax.errors import UserInputError
from mri_jax.io.nifti import NiftiImage

DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclasses.dataclass(frozen=True)
class Series:
  """One DICOM series in a folder: its UID, files (in slice order) and a few descriptive tags."""

  folder: Path
  uid: str
  files: tuple[str, ...]
  description: str = ""
  number: str = ""

  @property
  def label(self) -> str:
    """A short name for messages and output files: folder name + series number/description."""
    parts = [self.folder.name or "dicom"]
    if self.number:
      parts.append(f"s{self.number}")
    if self.description:
      parts.append(self.description)
    raw = "_".join(parts)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw).strip("._") or "dicom"


def _sitk():
  import SimpleITK as sitk

  sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM's warnings would bypass our messages
  return sitk


def _tag(reader, key: str) -> str:
  try:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""
  except RuntimeError:
    return ""


def _file_info(path: str):
  """The header of one DICOM file (no pixel data read)."""
  sitk = _sitk()
  reader = sitk.ImageFileReader()
  reader.SetFileName(path)
  reader.LoadPrivateTagsOn()
  try:
    reader.ReadImageInformation()
  except RuntimeError as err:
    raise UserInputError(f"cannot read DICOM file '{path}': {str(err).strip().splitlines()[-1]}") from None
  return reader


def list_series(folder: str | os.PathLike) -> list[Series]:
  """The DICOM series in `folder` (not its sub-folders), each with its files in slice order."""
  sitk = _sitk()
  folder = Path(folder)
  try:
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
  except RuntimeError:
    uids = ()
  out = []
  for uid in uids:
    files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    if not files:
      continue
    info = _file_info(files[0])
    out.append(Series(folder, uid, files, _tag(info, "0008|103e"), _tag(info, "0020|0011")))
  return out


def is_dicom_file(path: str | os.PathLike) -> bool:
  """A file with a DICOM suffix, or one that starts with the DICOM preamble's 'DICM' marker."""
  path = Path(path)
  if not path.is_file():
    return False
  if path.suffix.lower() in DICOM_SUFFIXES:
    return True
  try:
    with open(path, "rb") as f:
      head = f.read(132)
  except OSError:
    return False
  return len(head) == 132 and head[128:132] == b"DICM"


def select_series(folder: str | os.PathLike, uid: str | None = None) -> Series:
  """The one series of `folder` (or the one with `uid`).

  Raises:
    UserInputError: no series; several and no `uid`; `uid` not in the folder.
  """
  folder = Path(folder)
  if not folder.is_dir():
    raise UserInputError(f"DICOM input '{folder}' is not a folder")
  series = list_series(folder)
  if not series:
    raise UserInputError(f"no DICOM series found in '{folder}' (sub-folders are not searched)")
  if uid is not None:
    match = [s for s in series if s.uid == uid]
    if not match:
      raise UserInputError(f"series {uid} is not in '{folder}' (found: {', '.join(s.uid for s in series)})")
    return match[0]
  if len(series) > 1:
    listing = "; ".join(f"{s.uid} ({len(s.files)} files{', ' + s.description if s.description else ''})"
                        for s in series)
    raise UserInputError(f"'{folder}' holds {len(series)} DICOM series; pick one with --series UID, or restore "
                         f"them all with --output-dir: {listing}")
  return series[0]


def _to_nifti(image, path: Path, thickness: float | None = None) -> NiftiImage:
  """A SimpleITK image → NiftiImage with the RAS affine (see the module docstring)."""
  import nibabel as nib

  sitk = _sitk()
  if image.GetNumberOfComponentsPerPixel() != 1:
    raise UserInputError(f"'{path}' holds colour / multi-component images; a magnitude image is needed")
  if image.GetDimension() not in (2, 3):
    raise UserInputError(f"'{path}' is a {image.GetDimension()}-D DICOM image; only 2-D or 3-D are supported")
  if image.GetDimension() == 2:
    image = sitk.JoinSeries(image)
  if image.GetSize()[2] == 1 and thickness:  # one slice: its thickness is the through-plane voxel size
    image.SetSpacing((*image.GetSpacing()[:2], thickness))  # (as dcm2niix writes it)
  data = np.asarray(sitk.GetArrayFromImage(image), np.float32).transpose(2, 1, 0)  # (k, j, i) → (i, j, k)
  if not np.all(np.isfinite(data)):
    raise UserInputError(f"'{path}' holds NaN or Inf values")
  spacing = np.asarray(image.GetSpacing(), float)
  direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
  affine = np.eye(4)
  affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
  affine[:3, 3] = LPS_TO_RAS @ np.asarray(image.GetOrigin(), float)
  img = nib.Nifti1Image(data, affine)
  img.header.set_xyzt_units("mm", "sec")
  img.set_qform(affine, code=1)  # scanner coordinates
  img.set_sform(affine, code=1)
  kept = data if data.shape[2] > 1 else data[..., 0]
  return NiftiImage(data=kept, spacing=tuple(float(s) for s in spacing[:kept.ndim]), image=img, path=path)


# ImageType (0008,0008) values of images that are not magnitude: phase, real, imaginary parts.
NOT_MAGNITUDE = {"P": "phase", "PHASE": "phase", "R": "real-part", "REAL": "real-part", "I": "imaginary-part",
                 "IMAGINARY": "imaginary-part"}


def _check_image_type(files) -> None:
  info = _file_info(files[0])
  values = [v.strip().upper() for v in _tag(info, "0008|0008").split("\\")]
  if "MOSAIC" in values:
    raise UserInputError(f"'{files[0]}' is a Siemens mosaic (several slices tiled in one image); convert the "
                         "series to NIfTI with dcm2niix first and restore that")
  kind = next((NOT_MAGNITUDE[v] for v in values[2:3] if v in NOT_MAGNITUDE), None)
  if kind is not None:
    raise UserInputError(f"'{files[0]}' is a {kind} image (DICOM ImageType {'/'.join(values)}); the restorer "
                         "takes magnitude images")


def read_series(folder: str | os.PathLike, uid: str | None = None) -> NiftiImage:
  """The DICOM series in `folder` (the only one, or `uid`) as a NiftiImage (RAS affine).

  Raises:
    UserInputError: see the module docstring.
  """
  series = select_series(folder, uid)
  return read_files(series.files, Path(folder))


def read_files(files, path: Path) -> NiftiImage:
  """The images `files` (one series, in slice order) as one NiftiImage; `path` names it in messages."""
  sitk = _sitk()
  files = [str(f) for f in files]
  _check_image_type(files)
  if len(files) > 1:
    positions = [_tag(_file_info(f), "0020|0032") for f in files]
    if len(set(positions)) < len(positions):
      raise UserInputError(f"'{path}': {len(positions) - len(set(positions))} image(s) repeat a slice position "
                           "(repeated acquisitions or a time series): restore one volume at a time")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
  else:
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
  try:
    image = reader.Execute()
  except RuntimeError as err:
    raise UserInputError(f"cannot read the DICOM images of '{path}': {str(err).strip().splitlines()[-1]}") from None
  return _to_nifti(image, path, _thickness(files[0]) if len(files) == 1 else None)


def _thickness(path: str) -> float | None:
  """Spacing between slices (0018,0088), else slice thickness (0018,0050), of one DICOM file."""
  info = _file_info(path)
  for key in ("0018|0088", "0018|0050"):
    try:
      value = float(_tag(info, key).split("\\")[0])
    except ValueError:
      continue
    if value > 0 and np.isfinite(value):
      return value
  return None


def read_file(path: str | os.PathLike) -> NiftiImage:
  """One DICOM file (a 2-D image or a multi-frame volume) as a NiftiImage."""
  path = Path(path)
  if not path.is_file():
    raise UserInputError(f"input file '{path}' does not exist")
  return read_files([str(path)], path)
