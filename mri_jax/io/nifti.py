"""Read and write NIfTI images with the header and affine kept; outputs written atomically.

2-D images may be stored as X×Y or X×Y×1 (also with further singleton axes); they are returned as
(X, Y) arrays and written back in the input's original shape. Writes are byte-deterministic (the
gzip header carries no timestamp), so the same data gives the same file.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mri_jax.errors import UserInputError

if TYPE_CHECKING:  # nibabel is imported where a file is read: checkpoints and the GPU recipe run without it
  import nibabel as nib

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclasses.dataclass(frozen=True)
class NiftiImage:
  """A loaded image.

  Attributes:
    data: float32 array, (X, Y) or (X, Y, Z), scaling (scl_slope/inter) applied.
    spacing: voxel size per axis of `data` (mm).
    image: the nibabel image it came from (header, affine, original shape).
    path: where it was read from.
  """

  data: np.ndarray
  spacing: tuple[float, ...]
  image: nib.Nifti1Image
  path: Path

  @property
  def affine(self) -> np.ndarray:
    return self.image.affine


def _check_suffix(path: Path, what: str) -> None:
  if not str(path).lower().endswith(_NIFTI_SUFFIXES):
    raise UserInputError(f"{what} '{path}' must be a NIfTI file ending in .nii or .nii.gz")


def load_nifti(path: str | os.PathLike, *, allow_2d: bool = True) -> NiftiImage:
  """Loads and validates a 2-D or 3-D NIfTI image.

  Raises:
    UserInputError: missing/unreadable file, not NIfTI, complex or non-numeric data, more than
      three non-singleton axes, empty, NaN/Inf values.
  """
  path = Path(path)
  if not path.exists():
    raise UserInputError(f"input file '{path}' does not exist")
  if path.is_dir():
    raise UserInputError(f"input '{path}' is a directory, not a NIfTI file")
  _check_suffix(path, "input")
  import nibabel as nib

  try:
    img = nib.load(str(path))
  except Exception as err:  # nibabel raises many types for corrupt files
    raise UserInputError(f"cannot read '{path}' as NIfTI: {err}") from None
  if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
    raise UserInputError(f"'{path}' is not a NIfTI-1/2 image ({type(img).__name__})")
  shape = img.shape
  if 0 in shape or len(shape) == 0:
    raise UserInputError(f"'{path}' is empty (shape {shape})")
  dtype = img.get_data_dtype()
  if np.issubdtype(dtype, np.complexfloating) or dtype.fields is not None:
    raise UserInputError(f"'{path}' holds {dtype} data; a real-valued magnitude image is needed")
  kept = [ax for ax, n in enumerate(shape) if n > 1 or ax < 2]
  if len(kept) > 3 or any(ax > 2 for ax in kept):
    raise UserInputError(
        f"'{path}' has shape {shape}: only 2-D or 3-D images are supported (4-D series: "
        "extract one volume first)")
  try:
    data = np.asarray(img.get_fdata(dtype=np.float32))
  except Exception as err:
    raise UserInputError(f"cannot read the voxel data of '{path}': {err}") from None
  data = data.reshape([shape[ax] for ax in kept])
  if not np.all(np.isfinite(data)):
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    raise UserInputError(f"'{path}' contains {bad} NaN/Inf voxel(s); clean the image first")
  zooms = img.header.get_zooms()
  spacing = tuple(float(zooms[ax]) if ax < len(zooms) and zooms[ax] > 0 else 1.0 for ax in kept)
  return NiftiImage(data=data, spacing=spacing, image=img, path=path)


MIN_SLICE = 8  # voxels per in-plane axis: `simulate` and `restore` take slices of at least 8×8


def check_content(data: np.ndarray, name: str, verb: str) -> None:
  """Refuses an image that `simulate` / `restore` cannot `verb`: no positive voxel, constant, or
  slices under MIN_SLICE × MIN_SLICE voxels (a 3-D volume needs two axes of ≥ MIN_SLICE; the third,
  the slicing axis, may be thin).

  Raises:
    UserInputError: one of the above, naming `name` and the reason.
  """
  if float(data.max()) <= 0.0:
    raise UserInputError(f"{name} has no positive voxel (a magnitude image is needed)")
  if float(data.max()) == float(data.min()):
    raise UserInputError(f"{name} is constant ({float(data.max()):g}); there is nothing to {verb} "
                         "(a blank volume or a mask?)")
  in_plane = min(data.shape) if data.ndim == 2 else sorted(data.shape)[1]
  if in_plane < MIN_SLICE:
    raise UserInputError(f"{name} is too small to {verb} (shape {data.shape}; slices need ≥ "
                         f"{MIN_SLICE}×{MIN_SLICE} voxels)")


def check_output_path(output: str | os.PathLike, *inputs: str | os.PathLike,
                      overwrite: bool = False) -> Path:
  """Validates an output path before any work is done (never an input, directory must exist)."""
  output = Path(output)
  _check_suffix(output, "output")
  for inp in inputs:
    if inp is not None and Path(inp).exists() and output.exists() and output.resolve() == Path(inp).resolve():
      raise UserInputError(f"output '{output}' is the input file; choose another name (inputs are never overwritten)")
  if not output.parent.exists() and str(output.parent) not in ("", "."):
    raise UserInputError(f"output directory '{output.parent}' does not exist")
  if output.is_dir():
    raise UserInputError(f"output '{output}' is a directory")
  if output.exists() and not overwrite:
    raise UserInputError(f"output '{output}' already exists; pass --overwrite to replace it")
  return output


def check_folder(folder: str | os.PathLike, what: str) -> Path:
  """Validates an output folder before any work is done: a folder, or a path that can become one
  (its nearest existing ancestor is a folder). Creates nothing.

  Raises:
    UserInputError: `folder` or its nearest existing ancestor is a file.
  """
  folder = Path(folder)
  if folder.exists() and not folder.is_dir():
    raise UserInputError(f"{what} '{folder}' exists and is not a folder")
  ancestor = next((p for p in folder.absolute().parents if p.exists()), None)
  if ancestor is not None and not ancestor.is_dir():
    raise UserInputError(f"{what} '{folder}' cannot be created: '{ancestor}' is a file")
  return folder


def check_outputs(output_path, save_field, *inputs, overwrite: bool) -> tuple[Path, Path | None]:
  """Validated OUTPUT and optional second output (e.g. --save-field) paths: never an input, never
  the same file, parent folder present, not existing unless `overwrite`."""
  out = check_output_path(output_path, *inputs, overwrite=overwrite)
  field_out = None
  if save_field is not None:
    field_out = check_output_path(save_field, *inputs, overwrite=overwrite)
    if field_out.resolve() == out.resolve():
      raise UserInputError("--save-field must differ from OUTPUT")
  return out, field_out


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
  """Writes bytes to `path` through a temporary file in the same directory and a rename."""
  path = Path(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    with os.fdopen(fd, "wb") as f:
      f.write(payload)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def save_figure(path: str | os.PathLike, fig, **savefig_kwargs) -> None:
  """Saves a matplotlib figure as PNG atomically (rendered in memory, then `atomic_write_bytes`)."""
  import io

  buf = io.BytesIO()
  fig.savefig(buf, format="png", **savefig_kwargs)
  atomic_write_bytes(path, buf.getvalue())


def save_nifti_like(path: str | os.PathLike, data: np.ndarray, like: NiftiImage, *,
                    description: str | None = None) -> Path:
  """Writes `data` (shape of `like.data`) as float32 with `like`'s header, affine and shape.

  The header is copied (orientation codes, voxel sizes, units, intent...); the data type becomes
  float32 with identity scaling. The file appears only when completely written.
  """
  path = Path(path)
  data = np.asarray(data, np.float32)
  if data.shape != like.data.shape:
    raise ValueError(f"data shape {data.shape} does not match the reference {like.data.shape}")
  header = like.image.header.copy()
  header.set_data_dtype(np.float32)
  header.set_slope_inter(1.0, 0.0)
  if description is not None:
    header["descrip"] = description.encode()[:79]
  out = type(like.image)(data.reshape(like.image.shape), like.image.affine, header)
  # Keep the input's qform/sform codes (nibabel would otherwise reset them from the affine).
  out.set_qform(like.image.get_qform(), code=int(like.image.header["qform_code"]))
  out.set_sform(like.image.get_sform(), code=int(like.image.header["sform_code"]))
  raw = out.to_bytes()
  if str(path).lower().endswith(".gz"):
    raw = gzip.compress(raw, compresslevel=6, mtime=0)
  atomic_write_bytes(path, raw)
  return path
