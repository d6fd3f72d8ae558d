"""Real MR scans shipped inside package wheels, and an independent corruption model for them.

This module holds (1) loaders for the real-scan validation set of `mri-jax evaluate` and (2) a
plain-NumPy corruption model written independently of `mri_jax.physics`, so the restorer is not
judged only by the simulator it was trained on. Nothing is downloaded: every image comes from an
installed wheel (the `eval` extra). None of these files is used in training.

Groups (`GROUPS`; each a stack of 2-D slices, array axes (N, X, Y), X and Y as in RAS display):
- `dipy_b0`: dipy `S0_10slices.nii.gz`, a b = 0 brain EPI, 128², 2 mm (its header's z spacing is
  wrong; unused here);
- `dipy_aniso`: dipy `aniso_vox.nii.gz`, a T2-weighted brain, 58², 4 × 4 × 5 mm;
- `piesno`: dipy `test_piesno.nii.gz`, one brain slice, 96², 14 diffusion volumes (b = 0 then
  diffusion-weighted), real 8-coil noise: the volumes stand in for slices;
- `example4d`: nibabel `example4d.nii.gz`, a BOLD EPI, 128 × 96 × 24, first volume;
- `mosaic`: heudiconv `b0dwiForFmap`, Siemens Prisma 3 T multiband diffusion EPI, 1.5 mm, a
  mosaic of 9 × 9 tiles of 152 rows × 150 columns (150 × 152 as (X, Y)). The reference is the MEAN OF THE TWO b ≈ 5 REPEATS (its noise σ is the
  repeats' σ / √2, measured from their difference); the b = 1500 image is not used;
- `epi`: heudiconv `axasc35.dcm`, Siemens Trio 3 T EPI, mosaic 6 × 6 of 64², 35 slices;
- `phantom`: heudiconv `MRI_102TD_PHA_S…dcm`, three 162² reformats of a phantom bottle (its own
  receive shading is part of the reference).

Foreground masks (`foreground_masks`): Li's threshold, largest connected part, holes filled.
References are the scans as stored: they carry their own acquisition noise (and, for the phantom
and the EPIs, some receive shading). No denoising is applied to them; `Scan.reference_noise`
reports an estimate of that noise (σ / foreground mean) so readers can see how far from
noise-free each reference is. Each group keeps at most `slices` slices whose foreground has
≥ 30 % of the largest slice's area, evenly spread; intensities are divided by the 99.5th percentile
of the foreground (all kept slices together).

Independent corruption (`corrupt_independent`), per slice, alternating between two models:
- even slices: `poly_rician`: field b = exp(Σ_{i+j≤3} c_ij uⁱ vʲ) on coordinates centred on the
  union of the stack's foregrounds (its farthest point at radius 1; the field is held constant
  along rays beyond radius 1.25), c_ij ~ U(−a, a) with a ~ U(0.1, 0.35); y = |x·b + n|,
  n complex Gaussian (Rician magnitude);
- odd slices: `loop_coils`: a ring of 8 circular loops (radius ~ U(0.5, 0.8), centres at distance
  ~ U(1.3, 1.8) from the foreground centre, axes pointing at it, offset ~ U(−0.4, 0.4) out of the
  slice plane, random rotation, per-coil gain ~ U(0.7, 1.3)); each coil's sensitivity is the
  transverse Biot–Savart field Bx − i·By of its loop (48 straight segments); coil images
  x·s_k + n_k with independent complex Gaussian noise n_k; root-sum-of-squares combination; the
  true field is b = √Σ|s_k|² (its 98th / 2nd percentile over a head-sized ellipse ≈ 2.2 – 3.3).
Fields are scaled to mean 1 over the foreground. σ (per real/imaginary component, per coil) is a
fraction f ~ U(0.01, 0.08) of the clean foreground mean, the training convention; with the RSS of
unit-normalised sensitivities the foreground noise std is then ≈ σ in both models.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from scipy import ndimage

from mri_jax.errors import UserInputError

GROUPS = ("dipy_b0", "dipy_aniso", "piesno", "example4d", "mosaic", "epi", "phantom")
NOISE_FRACTION = (0.01, 0.08)


@dataclasses.dataclass
class Scan:
  """One group of real slices: reference images, foreground masks and provenance."""

  key: str
  title: str
  clean: np.ndarray      # (N, X, Y), foreground 99.5th percentile = 1
  mask: np.ndarray       # (N, X, Y) bool
  reference: str         # what the reference is (and what noise it carries)
  reference_noise: float  # estimated σ of the reference / its foreground mean


# --------------------------------------------------------------------------------------------
# Files inside wheels
# --------------------------------------------------------------------------------------------
def _package_file(package: str, *parts: str) -> Path:
  """A data file shipped inside an installed package's wheel."""
  import importlib.util

  spec = importlib.util.find_spec(package)
  if spec is None or spec.origin is None:
    raise UserInputError(f"the real-scan set needs the '{package}' package: pip install 'mri_jax[eval]' "
                         "(or evaluate with --real-set dipy / none)")
  path = Path(spec.origin).parent.joinpath(*parts)
  if not path.is_file():
    raise UserInputError(f"the installed '{package}' does not ship {'/'.join(parts)}")
  return path


def _nifti_slices(path: Path, volume: int | None = None) -> np.ndarray:
  """(Z, X, Y) slices of a NIfTI reoriented to RAS (closest canonical); `volume` of a 4-D one."""
  import nibabel as nib

  img = nib.as_closest_canonical(nib.load(path))
  vol = np.asarray(img.dataobj, dtype=np.float32)
  if volume is not None:
    vol = vol[..., volume]
  return np.moveaxis(vol, -1, 0)


def _dicom_pixels(path: Path) -> np.ndarray:
  import pydicom

  return pydicom.dcmread(path).pixel_array.astype(np.float32)


def dicom_to_xy(pixels: np.ndarray) -> np.ndarray:
  """(…, rows, cols) DICOM pixels of an axial LPS image → (…, X, Y) in RAS display order.

  Rows run anterior → posterior and columns right → left in a DICOM axial image, so both are
  reversed and the last two axes swapped.
  """
  return np.swapaxes(pixels[..., ::-1, ::-1], -1, -2)


def untile_mosaic(mosaic: np.ndarray, rows: int, cols: int, count: int) -> np.ndarray:
  """Siemens mosaic (tiles of rows × cols, row-major) → (count, rows, cols) slices."""
  per_row = mosaic.shape[1] // cols
  if mosaic.shape[0] % rows or mosaic.shape[1] % cols or count > per_row * (mosaic.shape[0] // rows):
    raise ValueError(f"mosaic {mosaic.shape} does not hold {count} tiles of {rows}×{cols}")
  return np.stack([mosaic[(i // per_row) * rows:(i // per_row + 1) * rows, (i % per_row) * cols:(i % per_row + 1) * cols]
                   for i in range(count)])


def _heudiconv_mosaic(path: Path) -> np.ndarray:
  """(N, X, Y) slices of a Siemens mosaic DICOM: N from CSA tag (0019,100a) NumberOfImagesInMosaic,
  a grid of ⌈√N⌉ × ⌈√N⌉ tiles (the Siemens layout, as dcm2niix reads it)."""
  import pydicom

  ds = pydicom.dcmread(path)
  count = int(ds[0x0019, 0x100A].value)
  grid = int(np.ceil(np.sqrt(count)))
  pixels = ds.pixel_array.astype(np.float32)
  return dicom_to_xy(untile_mosaic(pixels, pixels.shape[0] // grid, pixels.shape[1] // grid, count))


# --------------------------------------------------------------------------------------------
# Masks, slice choice, reference noise
# --------------------------------------------------------------------------------------------
def foreground_masks(slices: np.ndarray, per_slice: bool = False) -> np.ndarray:
  """Foreground of a stack: Li's minimum cross-entropy threshold of the lightly smoothed stack
  (or of each slice), then per slice the largest connected part with holes filled.

  Otsu's threshold (what N4 uses) splits bright CSF from tissue in b = 0 EPIs and then leaves most
  of the brain out; Li's threshold separates head from air in every group here.
  """
  from skimage.filters import threshold_li

  smooth = np.stack([ndimage.gaussian_filter(x, 1.0) for x in slices])
  thr = [threshold_li(x) for x in smooth] if per_slice else [threshold_li(smooth)] * len(smooth)
  out = []
  for x, t in zip(smooth, thr):
    m = ndimage.binary_opening(x > t, iterations=1)
    lab, n = ndimage.label(m)
    if n:
      m = lab == 1 + np.argmax(ndimage.sum(m, lab, range(1, n + 1)))
    out.append(ndimage.binary_fill_holes(m))
  return np.stack(out)


def _keep(mask: np.ndarray, slices: int | None) -> np.ndarray:
  """Indices of at most `slices` slices with ≥ 30 % of the largest foreground area, evenly spread."""
  area = mask.reshape(len(mask), -1).sum(axis=1)
  good = np.flatnonzero(area >= 0.3 * area.max())
  if slices is not None and len(good) > slices:
    good = good[np.linspace(0, len(good) - 1, slices).round().astype(int)]
  return good


def wavelet_noise(clean: np.ndarray, mask: np.ndarray) -> float:
  """Mean over slices of scikit-image's wavelet σ estimate / foreground mean (a rough figure)."""
  from skimage.restoration import estimate_sigma

  return float(np.mean([estimate_sigma(c) / c[m].mean() for c, m in zip(clean, mask)]))


def _scan(key: str, title: str, slices_all: np.ndarray, slices: int | None, reference: str,
          noise=None, per_slice: bool = False) -> Scan:
  """Masks, keeps slices, scales to the foreground's 99.5th percentile; `noise(clean, mask, idx,
  scale)` overrides the wavelet noise estimate."""
  mask_all = foreground_masks(slices_all, per_slice)
  idx = _keep(mask_all, slices)
  clean, mask = slices_all[idx], mask_all[idx]
  scale = float(np.percentile(clean[mask], 99.5))
  clean = (clean / scale).astype(np.float32)
  sigma = wavelet_noise(clean, mask) if noise is None else noise(clean, mask, idx, scale)
  return Scan(key, title, clean, mask, reference, sigma)


# --------------------------------------------------------------------------------------------
# The groups
# --------------------------------------------------------------------------------------------
def dipy_b0(slices: int | None = 8) -> Scan:
  """dipy's S0_10slices: a b = 0 brain EPI (128², 2 mm)."""
  vol = _nifti_slices(_package_file("dipy", "data", "files", "S0_10slices.nii.gz"), volume=0)
  return _scan("dipy_b0", "dipy S0_10slices (b = 0 EPI)", vol, slices, "as stored (single acquisition)")


def dipy_aniso(slices: int | None = 8) -> Scan:
  """dipy's aniso_vox: T2-weighted brain, 58², 4 × 4 × 5 mm."""
  vol = _nifti_slices(_package_file("dipy", "data", "files", "aniso_vox.nii.gz"))
  return _scan("dipy_aniso", "dipy aniso_vox (T2, 4 mm)", vol, slices, "as stored (single acquisition)")


def piesno(slices: int | None = 8) -> Scan:
  """dipy's test_piesno: one slice, 14 diffusion volumes with real 8-coil noise (volumes as slices).

  The volumes are turned by 90° so the anterior points up like the other groups.
  """
  vol = _nifti_slices(_package_file("dipy", "data", "files", "test_piesno.nii.gz"))
  vol = np.rot90(vol, k=-1, axes=(1, 2)).copy()
  return _scan("piesno", "dipy test_piesno (DWI, 8-coil noise)", vol, slices,
               "as stored (single acquisition, low SNR in the diffusion-weighted volumes)", per_slice=True)


def example4d(slices: int | None = 8) -> Scan:
  """nibabel's example4d: BOLD EPI 128 × 96 × 24, first volume."""
  vol = _nifti_slices(_package_file("nibabel", "tests", "data", "example4d.nii.gz"), volume=0)
  return _scan("example4d", "nibabel example4d (BOLD EPI)", vol, slices, "as stored (first volume)")


def mosaic(slices: int | None = 8) -> Scan:
  """heudiconv's b0dwiForFmap: the mean of the two b ≈ 5 repeats (3 T, 1.5 mm, 152 × 150 tiles)."""
  d = ("tests", "data", "b0dwiForFmap")
  a, b = (_heudiconv_mosaic(_package_file("heudiconv", *d, f"b0dwi_for_fmap+0000{i}.dcm")) for i in (1, 2))

  def repeat_noise(clean, mask, idx, scale):
    # std(a − b) = √2 σ per repeat; the mean of two repeats has σ / √2, i.e. std(a − b) / 2.
    diff = (a[idx] - b[idx]) / scale
    return float(np.mean([d[m].std() / 2 / c[m].mean() for d, c, m in zip(diff, clean, mask)]))

  return _scan("mosaic", "heudiconv b0dwi mosaic (3 T DWI b≈5)", (a + b) / 2, slices,
               "mean of the two b ≈ 5 repeats (noise σ / √2 of one repeat, measured from their difference)",
               repeat_noise)


def epi(slices: int | None = 8) -> Scan:
  """heudiconv's axasc35: EPI, 35 slices of 64² (3.25 mm) in a 6 × 6 mosaic."""
  vol = _heudiconv_mosaic(_package_file("heudiconv", "tests", "data", "axasc35.dcm"))
  return _scan("epi", "heudiconv axasc35 (EPI, 64²)", vol, slices, "as stored (single acquisition)")


def phantom(slices: int | None = 8) -> Scan:
  """heudiconv's phantom bottle: three 162² reformats."""
  path = next(_package_file("heudiconv", "tests", "data", "axasc35.dcm").parent.glob("MRI_102TD_PHA_S*.dcm"), None)
  if path is None:
    raise UserInputError("the installed 'heudiconv' does not ship tests/data/MRI_102TD_PHA_S*.dcm")
  vol = np.swapaxes(_dicom_pixels(path)[:, ::-1], -1, -2)   # bottle upright on display
  return _scan("phantom", "heudiconv phantom bottle", vol, slices, "as stored (includes its receive shading)")


_LOADERS = {"dipy_b0": dipy_b0, "dipy_aniso": dipy_aniso, "piesno": piesno, "example4d": example4d,
            "mosaic": mosaic, "epi": epi, "phantom": phantom}


def check_groups(groups) -> None:
  """Raises UserInputError unless every name in `groups` is one of `GROUPS`."""
  unknown = [g for g in groups if g not in _LOADERS]
  if unknown or not len(groups):
    raise UserInputError(f"unknown or no real-scan group(s) {list(groups)}; known: {', '.join(GROUPS)}")


def load(groups=GROUPS, slices: int | None = 8) -> list[Scan]:
  """The named groups (default: all), each with at most `slices` slices."""
  check_groups(groups)
  return [_LOADERS[g](slices) for g in groups]


# --------------------------------------------------------------------------------------------
# Independent corruption model (plain NumPy; no mri_jax.physics)
# --------------------------------------------------------------------------------------------
def object_coordinates(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(u, v) pixel coordinates centred on the mask's centroid, its farthest pixel at radius 1."""
  xx, yy = np.meshgrid(np.arange(mask.shape[0]), np.arange(mask.shape[1]), indexing="ij")
  cx, cy = xx[mask].mean(), yy[mask].mean()
  r = max(float(np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)[mask].max()), 1.0)
  return (xx - cx) / r, (yy - cy) / r


def polynomial_log_field(u: np.ndarray, v: np.ndarray, coef: np.ndarray, clip: float = 1.25) -> np.ndarray:
  """exp(Σ c_ij uⁱ vʲ) over the 9 non-constant monomials of order ≤ 3 (i + j ∈ 1…3), with (u, v)
  pulled in to radius `clip` so the cubic does not explode in the corners of the field of view."""
  shrink = np.minimum(1.0, clip / np.maximum(np.hypot(u, v), 1e-9))
  u, v = u * shrink, v * shrink
  powers = [(i, t - i) for t in range(1, 4) for i in range(t + 1)]
  return np.exp(sum(c * u ** i * v ** j for c, (i, j) in zip(coef, powers)))


def loop_field(points: np.ndarray, centre: np.ndarray, axis: np.ndarray, radius: float,
               segments: int = 48) -> np.ndarray:
  """Biot–Savart magnetic field (unit current, μ0/4π = 1) of a circular loop at `points` (P, 3)."""
  e1 = np.cross(axis, [0.0, 0.0, 1.0] if abs(axis[2]) < 0.9 else [1.0, 0.0, 0.0])
  e1 /= np.linalg.norm(e1)
  e2 = np.cross(axis, e1)
  t = np.linspace(0, 2 * np.pi, segments + 1)
  ring = centre + radius * (np.cos(t)[:, None] * e1 + np.sin(t)[:, None] * e2)   # (S+1, 3)
  mid, dl = (ring[1:] + ring[:-1]) / 2, np.diff(ring, axis=0)                     # (S, 3)
  r = points[:, None, :] - mid[None]                                             # (P, S, 3)
  return (np.cross(dl[None], r) / np.linalg.norm(r, axis=-1, keepdims=True) ** 3).sum(axis=1)


def loop_coil_sensitivities(u: np.ndarray, v: np.ndarray, rng: np.random.Generator, coils: int = 8) -> np.ndarray:
  """(coils, X, Y) complex receive sensitivities Bx − i·By of a ring of loops around the object."""
  radius, distance = rng.uniform(0.5, 0.8), rng.uniform(1.3, 1.8)
  offset, phi0 = rng.uniform(-0.4, 0.4), rng.uniform(0, 2 * np.pi)
  points = np.stack([u.ravel(), v.ravel(), np.zeros(u.size)], axis=-1)
  out = []
  for k in range(coils):
    phi = phi0 + 2 * np.pi * k / coils
    axis = np.array([np.cos(phi), np.sin(phi), 0.0])
    b = loop_field(points, np.array([distance * axis[0], distance * axis[1], offset]), axis, radius)
    out.append(rng.uniform(0.7, 1.3) * (b[:, 0] - 1j * b[:, 1]).reshape(u.shape))
  return np.stack(out)


def corrupt_independent(clean: np.ndarray, mask: np.ndarray, seed: int):
  """Corrupts (N, X, Y) slices with the independent model (see the module docstring).

  Returns:
    (images, true fields, absolute σ per slice, model name per slice).
  """
  rng = np.random.default_rng(seed)
  # One coordinate frame for the stack (the union of its masks): the coil ring is fixed to the head,
  # not resized to each slice's cross-section.
  u, v = object_coordinates(mask.any(axis=0))
  images, fields, sigmas, kinds = [], [], [], []
  for i, (x, m) in enumerate(zip(clean.astype(np.float64), mask)):
    sigma = rng.uniform(*NOISE_FRACTION) * x[m].mean()
    if i % 2 == 0:
      b = polynomial_log_field(u, v, rng.uniform(-1, 1, 9) * rng.uniform(0.1, 0.35))
      b /= b[m].mean()
      y = np.abs(x * b + sigma * (rng.standard_normal(x.shape) + 1j * rng.standard_normal(x.shape)))
      kinds.append("poly_rician")
    else:
      s = loop_coil_sensitivities(u, v, rng)
      s /= np.sqrt((np.abs(s) ** 2).sum(axis=0))[m].mean()
      b = np.sqrt((np.abs(s) ** 2).sum(axis=0))
      n = sigma * (rng.standard_normal(s.shape) + 1j * rng.standard_normal(s.shape))
      y = np.sqrt((np.abs(x * s + n) ** 2).sum(axis=0))
      kinds.append("loop_coils")
    images.append(y), fields.append(b), sigmas.append(sigma)
  return (np.stack(images).astype(np.float32), np.stack(fields).astype(np.float32),
          np.asarray(sigmas, np.float32), kinds)
