"""The `simulate` and `n4` commands as library functions: NIfTI in, NIfTI out.

`corruption_settings` / `simulate_array` / `simulate_nifti` corrupt an image with fixed settings
(the coil placement stays random per seed); `n4_settings` / `n4_nifti` run N4 on a file. Files keep
the input's header and affine, are written atomically, and inputs are never modified. The
defaults of these functions are the command line's defaults (the CLI reads them from here).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from mri_jax import n4, physics
from mri_jax.errors import UserInputError
from mri_jax.io import nifti


def corruption_settings(*, coils: int = 8, noise: float = 0.03, bias: float = 0.2, b1: float = 0.2,
                        receive_strength: float = 0.6, coil_model: str = "biot_savart",
                        combine: str = "rss", correlation: float = 0.0, rings: int = 1,
                        noise_domain: str = "image") -> dict:
  """Fixed corruption settings for `sample_params` (the coil placement stays random per seed).

  Raises:
    UserInputError: a value out of its documented range.
  """
  checks = [
      (1 <= coils <= physics.params.MAX_COILS, f"--coils must be in [1, {physics.params.MAX_COILS}], got {coils}"),
      (0.0 <= noise <= 1.0, f"--noise must be in [0, 1] (fraction of the image maximum), got {noise}"),
      (0.0 <= bias <= 2.0, f"--bias must be in [0, 2] (max |coefficient| of the log-polynomial field), got {bias}"),
      (0.0 <= b1 <= 1.0, f"--b1 must be in [0, 1] (transmit field amplitude), got {b1}"),
      (0.0 <= receive_strength <= 1.0, f"--receive-strength must be in [0, 1], got {receive_strength}"),
      (0.0 <= correlation < 1.0, f"--correlation must be in [0, 1), got {correlation}"),
      (rings >= 1 and coils % rings == 0, f"--rings ({rings}) must divide --coils ({coils})"),
      (coil_model in physics.params.COIL_MODELS, f"--coil-model must be one of {physics.params.COIL_MODELS}"),
      (combine in physics.params.COMBINES, f"--combine must be one of {physics.params.COMBINES}"),
      (noise_domain in physics.params.NOISE_DOMAINS, f"--noise-domain must be one of {physics.params.NOISE_DOMAINS}"),
  ]
  for ok, message in checks:
    if not ok:
      raise UserInputError(message)
  return dict(n_coils=coils, n_rings=rings, coil_model=coil_model, combine=combine,
              noise_domain=noise_domain, noise_sigma=noise, poly_coefficient=bias,
              b1_amplitude=b1, receive_strength=receive_strength, noise_correlation=correlation,
              coil_distance=(1.0, 1.2), coil_size=(0.9, 1.1), b1_width=(0.5, 0.8))


@functools.partial(jax.jit, static_argnames=("settings_items", "spacing"))
def _simulate_jit(key, clean, reference_mask, settings_items, spacing):
  k_params, k_noise = jax.random.split(key)
  params = physics.sample_params(k_params, dict(settings_items))
  return physics.simulate(k_noise, clean, params, spacing=spacing, reference_mask=reference_mask)


def simulate_array(clean: np.ndarray, *, seed: int, settings: dict, spacing=None,
                   reference_mask: np.ndarray | None = None) -> physics.Corrupted:
  """Corrupts one image with settings from `corruption_settings`; deterministic per seed."""
  items = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in settings.items()))
  spacing = None if spacing is None else tuple(float(s) for s in spacing)
  return _simulate_jit(jax.random.key(seed), jnp.asarray(clean, jnp.float32),
                       None if reference_mask is None else jnp.asarray(reference_mask),
                       items, spacing)


def simulate_nifti(input_path, output_path, *, seed: int = 0, save_field=None, overwrite=False,
                   **settings) -> dict:
  """Reads a 2-D/3-D NIfTI, corrupts it, writes the result (and optionally the bias field).

  The output keeps the input's header, affine and shape; files are written atomically and the
  input is never modified. Same seed and settings ⇒ byte-identical files.

  Returns:
    A summary dict (shape, spacing, absolute σ, bias range).

  Raises:
    UserInputError: settings out of range, output-path problems, an unreadable input, or one
      `restore` would refuse too (no positive voxel, constant, slices under 8×8: see
      `nifti.check_content`). Nothing is written then.
  """
  if seed < 0:
    raise UserInputError(f"--seed must be a non-negative integer, got {seed}")
  cfg = corruption_settings(**settings)
  out, field_out = nifti.check_outputs(output_path, save_field, input_path, overwrite=overwrite)
  img = nifti.load_nifti(input_path)
  nifti.check_content(img.data, f"'{input_path}'", "corrupt")
  result = simulate_array(img.data, seed=seed, settings=cfg, spacing=img.spacing)
  nifti.save_nifti_like(out, np.asarray(result.image), img, description="mri-jax simulate")
  if field_out is not None:
    nifti.save_nifti_like(field_out, np.asarray(result.bias), img, description="mri-jax bias field")
  bias = np.asarray(result.bias)
  return dict(shape=list(img.data.shape), spacing=list(img.spacing),
              noise_sigma_abs=float(result.noise_sigma), bias_min=float(bias.min()),
              bias_max=float(bias.max()))


def n4_settings(**values):
  """`N4Settings` from CLI values (missing ones take `N4Settings`' defaults); a value out of range
  becomes a `UserInputError`."""
  if "iterations" in values:
    values["iterations"] = tuple(values["iterations"])
  try:
    return n4.N4Settings(**values)
  except ValueError as err:
    raise UserInputError(str(err)) from None


def n4_nifti(input_path, output_path, *, backend: str = "jax", mask_path=None, save_field=None,
             overwrite: bool = False, settings=None, announce=None) -> dict:
  """N4-corrects a 2-D/3-D NIfTI; writes the corrected image (and optionally the bias field).

  The output keeps the input's header, affine and shape; files are written atomically and the
  input is never modified. `save_field` receives the multiplicative field exp(log field), so
  input = output × field, except where the input is negative: as `restore` does for magnitude
  images, negative output voxels (interpolation ringing, never in the fit) are written as 0 and
  counted in the summary's `clipped_voxels`.

  Raises:
    UserInputError: unreadable/invalid input or mask, a constant image, an image too small for N4,
      an empty mask, output-path problems.
  """
  settings = n4_settings() if settings is None else settings
  if backend not in n4.BACKENDS:
    raise UserInputError(f"--backend must be one of {n4.BACKENDS}, got {backend!r}")
  out, field_out = nifti.check_outputs(output_path, save_field, input_path, mask_path, overwrite=overwrite)
  img = nifti.load_nifti(input_path)
  data = img.data
  try:
    p = n4.plan(data.shape, settings, img.spacing)
  except ValueError as err:
    raise UserInputError(f"'{input_path}': {err}") from None
  if float(data.max()) <= 0.0:
    raise UserInputError(f"'{input_path}' has no positive voxel; N4 models a positive magnitude image")
  if float(data.max()) == float(data.min()):
    raise UserInputError(f"'{input_path}' is constant ({float(data.max()):g}); there is no bias field to estimate")
  mask = None
  if mask_path is not None:
    m = nifti.load_nifti(mask_path)
    if m.data.shape != data.shape:
      raise UserInputError(f"mask '{mask_path}' has shape {m.data.shape}, the image {data.shape}")
    mask = m.data > 0
  used = mask if mask is not None else np.asarray(n4.otsu_mask(data, settings))
  used = used & (data > 0)
  if int(used.sum()) < 16:
    raise UserInputError(f"the {'given' if mask is not None else 'Otsu'} mask holds {int(used.sum())} "
                         "positive voxel(s); N4 needs a foreground to fit")
  if len(np.unique(data[used])) < 2:
    raise UserInputError("the image is constant inside the mask; there is no bias field to estimate")
  if announce is not None:
    announce(f"running N4 ({backend} backend, shrink {list(p.shrink)}, {int(used.sum())} mask voxels)...")
  t0 = time.perf_counter()
  result = n4.correct(data, used, backend=backend, spacing=img.spacing, settings=settings)
  log_field = np.asarray(result.log_field)
  seconds = time.perf_counter() - t0
  if not np.all(np.isfinite(log_field)):  # never write a silently wrong image
    raise RuntimeError("N4 produced a non-finite field; please report this input")
  corrected = np.asarray(result.corrected)
  clipped = int(np.count_nonzero(corrected < 0))
  nifti.save_nifti_like(out, np.maximum(corrected, 0.0), img, description=f"mri-jax n4 ({backend})")
  field = np.exp(log_field)
  if field_out is not None:
    nifti.save_nifti_like(field_out, field, img, description=f"mri-jax n4 field ({backend})")
  inside = field[used]
  return dict(shape=list(data.shape), backend=backend, shrink=list(p.shrink),
              control_points=list(p.control_points), iterations=np.asarray(result.iterations).tolist(),
              field_min=float(inside.min()), field_max=float(inside.max()),
              mask_voxels=int(used.sum()), clipped_voxels=clipped, seconds=seconds)
