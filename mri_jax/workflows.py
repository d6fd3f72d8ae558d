"""File-level jobs behind the CLI: simulate a NIfTI, and the embedded-default demo.

Kept out of `cli.py` so notebooks and scripts can call them directly.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mri_jax import physics
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


def check_outputs(output_path, save_field, *inputs, overwrite: bool):
  """Validated OUTPUT and optional --save-field paths (never an input, never the same file)."""
  out = nifti.check_output_path(output_path, *inputs, overwrite=overwrite)
  field_out = None
  if save_field is not None:
    field_out = nifti.check_output_path(save_field, *inputs, overwrite=overwrite)
    if field_out.resolve() == out.resolve():
      raise UserInputError("--save-field must differ from OUTPUT")
  return out, field_out


def simulate_nifti(input_path, output_path, *, seed: int = 0, save_field=None, overwrite=False,
                   **settings) -> dict:
  """Reads a 2-D/3-D NIfTI, corrupts it, writes the result (and optionally the bias field).

  The output keeps the input's header, affine and shape; files are written atomically and the
  input is never modified. Same seed and settings ⇒ byte-identical files.

  Returns:
    A summary dict (shape, spacing, absolute σ, bias range).
  """
  if seed < 0:
    raise UserInputError(f"--seed must be a non-negative integer, got {seed}")
  cfg = corruption_settings(**settings)
  out, field_out = check_outputs(output_path, save_field, input_path, overwrite=overwrite)
  img = nifti.load_nifti(input_path)
  if float(img.data.max()) <= 0.0:
    raise UserInputError(f"'{input_path}' has no positive voxel; σ is relative to the image maximum")
  result = simulate_array(img.data, seed=seed, settings=cfg, spacing=img.spacing)
  nifti.save_nifti_like(out, np.asarray(result.image), img, description="mri-jax simulate")
  if field_out is not None:
    nifti.save_nifti_like(field_out, np.asarray(result.bias), img, description="mri-jax bias field")
  bias = np.asarray(result.bias)
  return dict(shape=list(img.data.shape), spacing=list(img.spacing),
              noise_sigma_abs=float(result.noise_sigma), bias_min=float(bias.min()),
              bias_max=float(bias.max()))


def _montage(path: Path, panels: dict[str, np.ndarray], title: str, errors_against: str | None = None) -> None:
  """Axial/coronal/sagittal mid-cuts of each volume; with `errors_against`, a second block of rows
  shows |panel − reference| (after normalising each by its foreground mean) for the image panels."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(panels)
  vols = list(panels.values())
  cx, cy, cz = (n // 2 for n in vols[0].shape)
  views = [("axial", lambda v: v[:, :, cz]), ("coronal", lambda v: v[:, cy, :]),
           ("sagittal", lambda v: v[cx, :, :])]
  rows = [(view, cut, False) for view, cut in views]
  if errors_against is not None:
    rows += [(f"|error| {view}", cut, True) for view, cut in views[:1]]
    ref = panels[errors_against]
    fg = ref > 0.1 * ref.max()
  fig, axes = plt.subplots(len(rows), len(names), figsize=(3.0 * len(names), 3.0 * len(rows)), squeeze=False)
  for r, (view, cut, is_err) in enumerate(rows):
    for c, (name, vol) in enumerate(zip(names, vols)):
      ax = axes[r, c]
      ax.set_xticks([]), ax.set_yticks([])
      if is_err:
        if name in ("bias field",):
          ax.axis("off")
          continue
        err = np.abs(vol / max(float(vol[fg].mean()), 1e-9) - ref / max(float(ref[fg].mean()), 1e-9))
        ax.imshow(cut(err).T, origin="lower", cmap="magma", vmin=0, vmax=0.5)
      else:
        sl = cut(vol).T
        field = name in ("bias field",)
        vmax = vol.max() if field else np.percentile(vol, 99.5)
        ax.imshow(sl, origin="lower", cmap="magma" if field else "gray", vmin=vol.min() if field else 0, vmax=vmax)
      if r == 0:
        ax.set_title(name)
      if c == 0:
        ax.set_ylabel(view)
  fig.suptitle(title)
  fig.tight_layout()
  nifti.save_figure(path, fig, dpi=80)
  plt.close(fig)


DEMO_SUBJECT_SPLIT = 7  # a key branch no dataset split uses: the demo subject is never a training subject


def demo(outdir, *, seed: int = 0, checkpoint=None, steps: int | None = None, log=None, **settings) -> dict:
  """The main job on the embedded default (MNI152 tissue maps from nilearn, offline).

  Makes a synthetic subject at 2 mm (deformed anatomy, random contrast, texture; seeded, never a
  training subject), corrupts it with the coil-physics simulator (σ relative to the mean brain
  signal, as in training), corrects it with N4 (JAX, 3-D) for comparison, restores it with the
  restorer (default: the shipped weights), and writes clean / corrupted / bias field / N4 /
  restored NIfTIs, a montage PNG with error maps and metrics (JSON and Markdown) into `outdir`.
  """
  import time

  from mri_jax import metrics as M
  from mri_jax import n4, restore
  from mri_jax.data import pairs, synth

  log = log or (lambda m: None)
  outdir = Path(outdir)
  if outdir.exists() and not outdir.is_dir():
    raise UserInputError(f"'{outdir}' exists and is not a directory")
  cfg = corruption_settings(**settings)
  model = restore.load_model(checkpoint)
  outdir.mkdir(parents=True, exist_ok=True)
  log("making a synthetic subject from the MNI152 maps...")
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), DEMO_SUBJECT_SPLIT), 0)
  subj = synth.synthesize(key, pairs.template_tissues(2))
  clean, mask = np.asarray(subj.image, np.float32), np.asarray(subj.mask)
  wm = np.asarray(subj.tissues[2]) > 0.9
  spacing = (2.0, 2.0, 2.0)
  affine = np.diag([2.0, 2.0, 2.0, 1.0])
  affine[:3, 3] = -np.asarray(clean.shape) + 1.0  # centred, RAS, 2 mm
  log("corrupting it with the simulator...")
  result = simulate_array(clean, seed=seed, settings=cfg, spacing=spacing, reference_mask=mask)
  corrupted, bias = np.asarray(result.image), np.asarray(result.bias)
  log("N4 (JAX, 3-D, shrink 4)...")
  t0 = time.perf_counter()
  n4_img = np.asarray(n4.n4(corrupted, settings=n4.N4Settings(shrink=4)).corrected)
  t_n4 = time.perf_counter() - t0
  log(f"restoring {clean.shape[-1]} axial slices ({model.source})...")
  res = restore.restore_array(corrupted, model, steps=steps, seed=seed, spacing=spacing, affine=affine,
                              progress=True)
  restored = res.image
  import nibabel as nib

  like = nifti.NiftiImage(data=clean, spacing=spacing, image=nib.Nifti1Image(clean, affine),
                          path=outdir / "clean.nii.gz")
  files = {"clean": clean, "corrupted": corrupted, "bias_field": bias, "n4": n4_img, "restored": restored}
  for name, arr in files.items():
    nifti.save_nifti_like(outdir / f"{name}.nii.gz", arr, like, description=f"mri-jax demo {name}")

  # Scores per axial slice holding ≥ 30% of the largest brain area, then averaged.
  zs = pairs.slice_indices(mask, min(32, clean.shape[-1]))
  scores = jax.jit(jax.vmap(M.masked_scores))
  stack = lambda v: np.stack([v[..., z] for z in np.unique(zs)]).astype(np.float32)
  ref, m = stack(clean), stack(mask)

  def quality(v):
    s = scores(stack(v), ref, m)
    return float(np.mean(s["ssim"])), float(np.mean(s["psnr"]))

  def cv(x):
    v = x[wm]
    return float(v.std() / v.mean())

  table = {}
  for name, vol in (("corrupted", corrupted), ("corrupted / true field (oracle)", corrupted / bias),
                    ("N4 (JAX)", n4_img), ("restored", restored)):
    ssim, psnr = quality(vol)
    table[name] = {"ssim": ssim, "psnr": psnr, "wm_cv": cv(vol)}
  table["clean"] = {"ssim": 1.0, "psnr": float("inf"), "wm_cv": cv(clean)}
  metrics = {
      "subject": {"contrast": synth.SEQUENCES[int(subj.sequence)], "shape": list(clean.shape), "voxel_mm": 2},
      "noise_sigma_fraction_of_brain_mean": cfg["noise_sigma"],
      "noise_sigma_abs": float(result.noise_sigma),
      "bias_min_in_brain": float(bias[mask].min()), "bias_max_in_brain": float(bias[mask].max()),
      "methods": table,
      "structural_error_reduction": 1.0 - (1.0 - table["restored"]["ssim"]) / max(1.0 - table["corrupted"]["ssim"], 1e-9),
      "seconds": {"n4_jax_3d": t_n4, "restore_total": res.seconds["total"], "restore_n4": res.seconds["n4"],
                  "restore_network": res.seconds["network"]},
      "model": model.source, "steps": model.default_steps if steps is None else int(steps),
      "settings": {k: v for k, v in cfg.items()}, "seed": seed,
  }
  _montage(outdir / "montage.png", {"corrupted": corrupted, "bias field": bias, "N4 (JAX)": n4_img,
                                    "restored": restored, "clean": clean},
           f"Synthetic {metrics['subject']['contrast']} subject: {cfg['n_coils']} coils, σ = {cfg['noise_sigma']} "
           f"of the brain mean; restored in K = {metrics['steps']}", errors_against="clean")
  nifti.atomic_write_bytes(outdir / "metrics.json", json.dumps(metrics, indent=2).encode())
  rows = "\n".join(f"| {k} | {v['ssim']:.4f} | {v['psnr']:.2f} | {v['wm_cv']:.4f} |" for k, v in table.items())
  md = (f"Synthetic subject ({metrics['subject']['contrast']}, 2 mm), seed {seed}; SSIM/PSNR inside the brain "
        "mask after normalising by its mean, averaged over axial slices.\n\n"
        f"| image | SSIM | PSNR (dB) | WM CV |\n|---|---|---|---|\n{rows}\n\n"
        f"Structural error (1 − SSIM) reduced by {100 * metrics['structural_error_reduction']:.1f}% "
        f"vs the corrupted input; restore {res.seconds['total']:.1f} s ({model.source}).\n")
  nifti.atomic_write_bytes(outdir / "metrics.md", md.encode())
  return metrics


def n4_settings(*, shrink: int = 4, iterations=(50, 50, 50, 50), convergence: float = 0.001,
                control_points: int = 4, spline_distance: float | None = None, bins: int = 200,
                fwhm: float = 0.15, wiener: float = 0.01):
  """`N4Settings` from CLI values; a value out of range becomes a `UserInputError`."""
  from mri_jax import n4

  try:
    return n4.N4Settings(shrink=shrink, iterations=tuple(iterations), convergence=convergence,
                         control_points=control_points, spline_distance=spline_distance, bins=bins,
                         fwhm=fwhm, wiener=wiener)
  except ValueError as err:
    raise UserInputError(str(err)) from None


def n4_nifti(input_path, output_path, *, backend: str = "jax", mask_path=None, save_field=None,
             overwrite: bool = False, settings=None, announce=None) -> dict:
  """N4-corrects a 2-D/3-D NIfTI; writes the corrected image (and optionally the bias field).

  The output keeps the input's header, affine and shape; files are written atomically and the
  input is never modified. `save_field` receives the multiplicative field exp(log field), so
  input = output × field.

  Raises:
    UserInputError: unreadable/invalid input or mask, a constant image, an image too small for N4,
      an empty mask, output-path problems.
  """
  from mri_jax import n4

  settings = n4_settings() if settings is None else settings
  if backend not in n4.BACKENDS:
    raise UserInputError(f"--backend must be one of {n4.BACKENDS}, got {backend!r}")
  out, field_out = check_outputs(output_path, save_field, input_path, mask_path, overwrite=overwrite)
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
  import time

  if announce is not None:
    announce(f"running N4 ({backend} backend, shrink {list(p.shrink)}, {int(used.sum())} mask voxels)...")
  t0 = time.perf_counter()
  result = n4.correct(data, used, backend=backend, spacing=img.spacing, settings=settings)
  log_field = np.asarray(result.log_field)
  seconds = time.perf_counter() - t0
  if not np.all(np.isfinite(log_field)):  # never write a silently wrong image
    raise RuntimeError("N4 produced a non-finite field; please report this input")
  nifti.save_nifti_like(out, np.asarray(result.corrected), img, description=f"mri-jax n4 ({backend})")
  field = np.exp(log_field)
  if field_out is not None:
    nifti.save_nifti_like(field_out, field, img, description=f"mri-jax n4 field ({backend})")
  inside = field[used]
  return dict(shape=list(data.shape), backend=backend, shrink=list(p.shrink),
              control_points=list(p.control_points), iterations=np.asarray(result.iterations).tolist(),
              field_min=float(inside.min()), field_max=float(inside.max()),
              mask_voxels=int(used.sum()), seconds=seconds)


def build_data(config: str, *, data_dir, manual_dir=None, n4_backend: str | None = None,
               seed: int | None = None, subjects: tuple[int, int, int] | None = None) -> dict:
  """Builds the `mri_pairs` TFDS dataset (array_record) for one config; returns split sizes.

  Overrides (N4 backend, seed, subjects per split) give a derived config named e.g.
  'slices128-n4sitk-seed3', so they never overwrite the canonical one.
  """
  import dataclasses

  from tfds_builders import mri_pairs

  known = {c.name: c for c in mri_pairs.BUILDER_CONFIGS}
  if config not in known:
    raise UserInputError(f"unknown config {config!r}; choose one of {sorted(known)}")
  base = known[config]
  if base.source == "nifti":
    if manual_dir is None:
      raise UserInputError(f"config {config!r} reads your NIfTI files: pass --manual-dir")
    if not Path(manual_dir).is_dir():
      raise UserInputError(f"--manual-dir '{manual_dir}' is not a directory")
  elif manual_dir is not None:
    raise UserInputError(f"config {config!r} is synthetic; --manual-dir is only for the *_nifti configs")
  changes, suffix = {}, []
  if n4_backend is not None and n4_backend != base.pairs.n4_backend:
    if n4_backend not in ("jax", "sitk", "none"):
      raise UserInputError(f"--n4-backend must be jax, sitk or none, got {n4_backend!r}")
    changes["n4_backend"], suffix = n4_backend, suffix + [f"n4{n4_backend}"]
  if seed is not None and seed != base.pairs.seed:
    if seed < 0:
      raise UserInputError(f"--seed must be non-negative, got {seed}")
    changes["seed"], suffix = seed, suffix + [f"seed{seed}"]
  if subjects is not None and tuple(subjects) != base.pairs.subjects:
    if len(subjects) != 3 or min(subjects) < 1:
      raise UserInputError(f"--subjects needs three positive counts (train,validation,test), got {subjects}")
    changes["subjects"], suffix = tuple(subjects), suffix + ["subj" + "x".join(map(str, subjects))]
  cfg = base
  if changes:
    cfg = mri_pairs.MriPairsConfig(name="-".join([config] + suffix), description=base.description,
                                   source=base.source, pairs=dataclasses.replace(base.pairs, **changes))
  Path(data_dir).mkdir(parents=True, exist_ok=True)
  builder = mri_pairs.Builder(config=cfg, data_dir=str(data_dir), file_format="array_record")
  import tensorflow_datasets as tfds

  dl_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir else None)
  builder.download_and_prepare(download_config=dl_config)
  sizes = {name: int(split.num_examples) for name, split in builder.info.splits.items()}
  return dict(name=f"mri_pairs/{cfg.name}", path=str(builder.data_dir), splits=sizes)
