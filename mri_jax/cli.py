"""`mri-jax` command line: thin sub-commands that parse options and call library functions.

Exit codes: 0 success; 2 a user error (bad file, bad option: one line on stderr, nothing written);
1 an unexpected internal error (with traceback: please report it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mri_jax.errors import UserInputError

EXIT_USER_ERROR = 2
FAST_HELP = ("the shipped fast weights (configs/mixed.py:fast): the network 3.4× faster, restore's SSIM within "
             "0.0013 of the default weights (README, Results); not with --checkpoint or --n4 none")


class _Parser(argparse.ArgumentParser):
  """argparse that reports a bad option as one line (no usage dump) and exits with 2."""

  def error(self, message):
    self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def _defaults(fn) -> dict:
  """The keyword defaults of a library function: the CLI shows and uses the library's, never its own."""
  import inspect

  return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def _add_corruption_options(p: argparse.ArgumentParser) -> None:
  from mri_jax import file_jobs, physics

  d = _defaults(file_jobs.corruption_settings)
  g = p.add_argument_group("corruption (coil placement, coil phases and polynomial coefficients are random per --seed)")
  g.add_argument("--coils", type=int, default=d["coils"], metavar="N",
                 help=f"receive coils, 1-{physics.params.MAX_COILS} (1 => Rician noise; default %(default)s)")
  g.add_argument("--noise", type=float, default=d["noise"], metavar="SIGMA",
                 help="noise σ per real/imaginary component as a fraction of the image maximum "
                      "(demo: of the mean brain signal); default %(default)s")
  g.add_argument("--bias", type=float, default=d["bias"], metavar="C",
                 help="max |coefficient| of the random order-3 log-polynomial field (TorchIO's "
                      "'coefficients'); 0 disables it; default %(default)s")
  g.add_argument("--b1", type=float, default=d["b1"], metavar="A",
                 help="transmit (B1+) central-brightening amplitude in [0, 1]; default %(default)s")
  g.add_argument("--receive-strength", type=float, default=d["receive_strength"], metavar="G",
                 help="receive-field strength γ in [0, 1]: 1 = raw coil physics, 0 = uniform "
                      "(prescan-normalised); default %(default)s")
  g.add_argument("--coil-model", choices=physics.params.COIL_MODELS, default=d["coil_model"],
                 help="coil sensitivity model (default %(default)s)")
  g.add_argument("--combine", choices=physics.params.COMBINES, default=d["combine"],
                 help="coil combination: root-sum-of-squares or SNR-optimal Roemer (default %(default)s)")
  g.add_argument("--correlation", type=float, default=d["correlation"], metavar="RHO",
                 help="coil noise correlation ρ in [0, 1) (default %(default)s: independent coils)")
  g.add_argument("--rings", type=int, default=d["rings"],
                 help="rings of coils along the bore axis; must divide --coils (default %(default)s)")
  g.add_argument("--noise-domain", choices=physics.params.NOISE_DOMAINS, default=d["noise_domain"],
                 help="add noise in image space or k-space (equivalent in distribution)")
  g.add_argument("--seed", type=int, default=0, help="random seed; same seed => byte-identical output")


def _settings(args) -> dict:
  return dict(coils=args.coils, noise=args.noise, bias=args.bias, b1=args.b1,
              receive_strength=args.receive_strength, coil_model=args.coil_model,
              combine=args.combine, correlation=args.correlation, rings=args.rings,
              noise_domain=args.noise_domain)


def _cmd_simulate(args) -> int:
  from mri_jax import file_jobs

  summary = file_jobs.simulate_nifti(args.input, args.output, seed=args.seed, save_field=args.save_field,
                                     overwrite=args.overwrite, **_settings(args))
  print(f"wrote {args.output} (shape {summary['shape']}, σ = {summary['noise_sigma_abs']:.4g}, "
        f"bias {summary['bias_min']:.3f}–{summary['bias_max']:.3f})"
        + (f" and {args.save_field}" if args.save_field else ""))
  return 0


def _checkpoint(args) -> str | None:
  """The weights a command runs with: --checkpoint DIR, the shipped fast weights with --fast, else
  None (the shipped default weights)."""
  from mri_jax import restore

  fast = getattr(args, "fast", False)
  checkpoint = restore.choose_weights(args.checkpoint, fast)
  if fast and getattr(args, "n4", None) == "none":
    # restore would skip N4, the field network, the blend, the clamp and the floor's removal: the
    # fast network alone scores below its input (README, `--fast`)
    raise UserInputError("--fast needs N4 (--n4 jax or sitk): with --n4 none the output is the fast network's "
                         "alone, which scores below the input")
  return checkpoint


def _cmd_demo(args) -> int:
  from mri_jax import demo

  say = lambda m: print(m, file=sys.stderr, flush=True)
  demo.demo(args.outdir, seed=args.seed, checkpoint=_checkpoint(args), steps=args.steps, log=say,
            **_settings(args))
  print((Path(args.outdir) / "metrics.md").read_text())
  print(f"wrote clean/corrupted/bias_field/n4/restored .nii.gz, montage.png and metrics.{{json,md}} to {args.outdir}")
  return 0


def _int_list(text: str) -> tuple[int, ...]:
  try:
    values = tuple(int(v) for v in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
  return values


def _cmd_n4(args) -> int:
  from mri_jax import file_jobs

  settings = file_jobs.n4_settings(
      shrink=args.shrink, iterations=args.iterations, convergence=args.convergence,
      control_points=args.control_points, spline_distance=args.spline_distance, bins=args.bins,
      fwhm=args.fwhm, wiener=args.wiener, min_shrunk=args.min_shrunk)
  s = file_jobs.n4_nifti(args.input, args.output, backend=args.backend, mask_path=args.mask,
                         save_field=args.save_field, overwrite=args.overwrite, settings=settings,
                         announce=lambda m: print(m, file=sys.stderr, flush=True))
  print(f"wrote {args.output} (shape {s['shape']}, shrink {s['shrink']}, field in mask "
        f"{s['field_min']:.3f}–{s['field_max']:.3f}, {s['seconds']:.2f} s"
        + (f"; {s['clipped_voxels']} negative voxel(s) written as 0" if s["clipped_voxels"] else "") + ")"
        + (f" and {args.save_field}" if args.save_field else ""))
  return 0


def _cmd_build_data(args) -> int:
  from mri_jax.data import build

  s = build.build_data(args.config, data_dir=args.data_dir, manual_dir=args.manual_dir,
                           n4_backend=args.n4_backend, seed=args.seed, subjects=args.subjects)
  print(f"built {s['name']} in {s['path']}: " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()))
  print(f"read it with tfds.data_source('{s['name']}', split='train', data_dir='{args.data_dir}')")
  return 0


def _cmd_train(args) -> int:
  from mri_jax import config, train
  from mri_jax.train import distributed

  cfg = config.load(args.config, args.overrides)
  distributed.initialize(distributed=args.distributed, coordinator=args.coordinator,
                         num_processes=args.num_processes, process_id=args.process_id, timeout=args.init_timeout)
  result = train.train(cfg, args.workdir, log=lambda m: print(m, flush=True), init_from=args.init_from,
                       warm_start=args.warm_start)
  print(f"done: {args.workdir} (final {result['final']})")
  return 0


def _cmd_train_field(args) -> int:
  from mri_jax.train import field

  info = field.run(args.outdir, data_dir=args.data_dir, datasets=tuple(args.dataset or field.DEFAULT_DATASETS),
                   validation=None if args.validation == "none" else args.validation, steps=args.steps,
                   augment=args.augment, seed=args.seed,
                   batch=args.batch_size, lr=args.lr, overwrite=args.overwrite, log=lambda m: print(m, flush=True))
  v = info.get("validation")
  tail = (f"; validation RMS of the log field left: N4 {v['rms_log_field_n4']:.4f} → {v['rms_log_field_refined']:.4f}"
          if v else "")
  print(f"wrote {args.outdir} ({info['train_slices']} training slices, {info['steps']} steps{tail})")
  return 0


def _cmd_ablations(args) -> int:
  from mri_jax import ablations

  rows = ablations.collect(args.runs)
  table = ablations.to_markdown(rows)
  print(table, end="")
  written = ablations.write(rows, markdown_path=args.markdown, csv_path=args.csv, plot_path=args.plot)
  if written:
    print("wrote " + ", ".join(written))
  return 0


def _restore_options(args) -> dict:
  return dict(steps=args.steps, seed=args.seed, n4=args.n4, n4_mode=args.n4_mode, batch_size=args.batch_size,
              axis=args.axis, fidelity=args.fidelity, lowfreq=args.lowfreq, noise_clamp=args.noise_clamp,
              blend=args.blend, wiener=args.wiener, field_net=args.field_net, noise_floor=args.noise_floor,
              independent_slices=args.independent_slices)


def _cmd_restore(args) -> int:
  from mri_jax import restore

  if args.output_dir is not None:
    return _restore_many(args)
  if len(args.paths) != 2:
    raise UserInputError(f"give INPUT OUTPUT, or several INPUTs with --output-dir DIR (got {len(args.paths)} "
                         "path(s) and no --output-dir)")
  inp, output = args.paths
  s = restore.restore_nifti(inp, output, checkpoint=_checkpoint(args), series=args.series,
                            save_field=args.save_field, save_residual=args.save_residual,
                            save_uncertainty=args.save_uncertainty, uncertainty_seeds=args.uncertainty_seeds,
                            overwrite=args.overwrite, progress=not args.quiet, **_restore_options(args))
  where = f", slices along axis {s['axis']}" if s["axis"] is not None else ""
  extra = [p for p in (args.save_field, args.save_residual, args.save_uncertainty) if p]
  c = s["consistency"]
  bias = f"N4 {s['n4']}" + (f" + field network (w {s['field_net']:g})" if s["field_net"] else "")
  print(f"wrote {output} (shape {s['shape']}{where}, K = {s['steps']}, {bias}, "
        f"{s['seconds']['total']:.2f} s; model {s['model']})" + "".join(f" and {p}" for p in extra))
  print(f"consistency: residual energy {c['energy']:.2f} × noise (median over slices), structure "
        f"{c['structure']:.2f} (max {c['max_structure']:.2f}; noise-like ≈ 1)")
  if s["blend"] is not None:
    b = s["blend"]
    names = ([f"content coarser than {b['bands'][0]:g} px"] + [f"{lo:g}–{hi:g} px" for lo, hi in
             zip(b["bands"][:-1], b["bands"][1:])] + ["finer"]) if b["bands"] else ["all"]
    whats = ["the network-piloted Wiener filter's" if b.get("wiener") else "the network's"]
    whats += ["the network's own"] if b.get("network_too") else []
    for w, what in enumerate(whats):
      sel = slice(w * len(names), (w + 1) * len(names))
      parts = [f"{m:.2f} ({name}" + (f"; slices {lo:.2f}–{hi:.2f})" if hi > lo else ")")
               for name, m, lo, hi in zip(names, b["median"][sel], b["min"][sel], b["max"][sel])]
      print(f"SURE blend: share of {what} change to the N4-corrected input kept, α = " + ", ".join(parts)
            + " (1 = all, 0 = the N4-corrected input)")
  if s.get("noise_floor"):
    f = s["noise_floor"]
    rest = f["slices"] - f["slices_from_air"]
    print(f"noise floor removed: {f['coils']:.1f} effective coil(s) (median), read from the air on "
          f"{f['slices_from_air']} of {f['slices']} slice(s)"
          + (f"; one coil and the input's σ assumed on {rest} (no usable air)" if rest else ""))
  if c["flagged"]:
    shown = ", ".join(map(str, c["flagged"][:12])) + (" …" if len(c["flagged"]) > 12 else "")
    print(f"warning: on {len(c['flagged'])} slice(s) ({shown}) the output departs from the input beyond noise "
          f"(structure > {c['warn_structure']:g}): anatomy may have been erased or invented there; compare "
          "with the input or look at --save-residual", file=sys.stderr)
  return 0


def _restore_many(args) -> int:
  from mri_jax import restore_files

  extras = [flag for flag, v in (("--save-field", args.save_field), ("--save-residual", args.save_residual),
                                 ("--save-uncertainty", args.save_uncertainty)) if v]
  if extras:
    raise UserInputError(f"{', '.join(extras)} name one file: use them with INPUT OUTPUT, not with --output-dir")
  results = restore_files.restore_files(args.paths, args.output_dir, series=args.series, checkpoint=_checkpoint(args),
                                        overwrite=args.overwrite, progress=not args.quiet, **_restore_options(args))
  failed = [r for r in results if r.error]
  print(f"restored {len(results) - len(failed)} of {len(results)} file(s) into {args.output_dir}"
        + (f"; {len(failed)} failed (listed above)" if failed else ""))
  if any(r.internal for r in failed):
    return 1
  return EXIT_USER_ERROR if failed else 0


def _cmd_export_weights(args) -> int:
  from mri_jax import restore

  s = restore.export_weights(args.workdir, args.out_dir)
  print(f"wrote {s['arrays']} arrays ({s['bytes'] / 1e6:.2f} MB) from step {s['step']} to {s['path']}")
  return 0


def _cmd_evaluate(args) -> int:
  from mri_jax import evaluate

  report = evaluate.evaluate(args.outdir, data_dir=args.data_dir, dataset=args.dataset, split=args.split,
                             slices=args.slices, steps=args.steps, checkpoint=_checkpoint(args),
                             real=not args.no_real, real_set=args.real_set, real_slices=args.real_slices,
                             with_faithfulness=args.faithfulness, seed=args.seed,
                             log=lambda m: print(m, file=sys.stderr, flush=True))
  print(report["markdown"])
  print(f"wrote results.md, results.json and montage.png to {args.outdir}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  """The `mri-jax` argument parser with one sub-command per job (defaults read from the library)."""
  from mri_jax import evaluate, file_jobs, restore

  parser = _Parser(prog="mri-jax", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

  p = sub.add_parser(
      "simulate", help="corrupt a clean NIfTI with coil sensitivities, bias fields and noise",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Corrupt a 2-D or 3-D NIfTI image through the coil-physics simulator. The output "
                  "keeps the input's header, affine and shape (float32), is written atomically, and "
                  "the input is never modified. Array axes are (x, y[, z]) with z the bore axis.",
      epilog="examples:\n"
             "  mri-jax simulate t1.nii.gz t1_noisy.nii.gz\n"
             "  mri-jax simulate t1.nii.gz out.nii.gz --coils 1 --noise 0.05 --seed 3   # Rician\n"
             "  mri-jax simulate t1.nii.gz out.nii.gz --coils 32 --rings 4 --correlation 0.3 \\\n"
             "      --save-field field.nii.gz")
  p.add_argument("input", help="clean image (.nii or .nii.gz, 2-D or 3-D)")
  p.add_argument("output", help="corrupted image to write (.nii or .nii.gz)")
  p.add_argument("--save-field", metavar="F", help="also write the true multiplicative bias field here")
  p.add_argument("--overwrite", action="store_true", help="replace OUTPUT / --save-field if they exist")
  _add_corruption_options(p)
  p.set_defaults(func=_cmd_simulate)

  from mri_jax.models import fieldnet as field_train  # light: the training defaults, without mri_jax.train

  p = sub.add_parser(
      "train-field", help="train the field network that refines N4's bias field in restore",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Train the field network (mri_jax/models/fieldnet.py) on built mri_pairs records: for each "
                  "training slice, N4 with restore's settings, then a small CNN learns the smooth log bias "
                  "field N4 left (the records hold the simulator's true field). Writes config.json + "
                  "params.npz into OUTDIR; the shipped ones are mri_jax/weights/field/. Same records, steps "
                  "and seed give the same weights on the same machine.",
      epilog="examples:\n"
             "  mri-jax build-data --config mixed128 --data-dir data\n"
             "  mri-jax build-data --config mixed128fine --data-dir data\n"
             "  mri-jax train-field field_w --data-dir data          # the shipped recipe (≈ 35 min, 2 cores)")
  p.add_argument("outdir", help="directory for the weights (created)")
  p.add_argument("--data-dir", required=True, help="TFDS data directory holding the built records")
  p.add_argument("--dataset", action="append", metavar="NAME",
                 help=f"training records (repeatable; default {' + '.join(field_train.DEFAULT_DATASETS)})")
  p.add_argument("--validation", default=field_train.DEFAULT_VALIDATION, metavar="NAME",
                 help="records whose validation split is reported ('none': skip); default %(default)s")
  p.add_argument("--steps", type=int, default=field_train.DEFAULT_STEPS, help="training steps; default %(default)s")
  p.add_argument("--augment", type=int, default=field_train.DEFAULT_AUGMENT,
                 help="re-corrupted copies of each record (a random smooth field multiplied on, in place of "
                      "the simulator's, or none at all), 0–8; default %(default)s")
  p.add_argument("--seed", type=int, default=0, help="seed of the weights, batches and re-corruption; default %(default)s")
  p.add_argument("--batch-size", type=int, default=32, help="slices per step; default %(default)s")
  p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay); default %(default)s")
  p.add_argument("--overwrite", action="store_true", help="replace weights already in OUTDIR")
  p.set_defaults(func=_cmd_train_field)

  p = sub.add_parser(
      "demo", help="run the main job on the embedded default anatomy (no download)",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Make a synthetic subject (2 mm) from the MNI152 tissue maps shipped in nilearn, "
                  "corrupt it with the simulator, correct it with N4 (JAX) and restore it with the "
                  "restorer (default: the shipped weights), and write clean / corrupted / bias_field "
                  "/ n4 / restored NIfTIs, montage.png (with error maps) and metrics.json/.md into "
                  "OUTDIR (created if missing; these file names in it are replaced).",
      epilog="examples:\n  mri-jax demo demo_out\n  mri-jax demo demo_out --coils 1 --noise 0.05 --seed 3")
  p.add_argument("outdir", help="output directory")
  p.add_argument("--checkpoint", metavar="DIR", help="restorer weights (default: the shipped ones)")
  p.add_argument("--fast", action="store_true", help=FAST_HELP)
  p.add_argument("--steps", type=int, default=None, metavar="K", help="restorer steps (default: the model's)")
  _add_corruption_options(p)
  p.set_defaults(func=_cmd_demo)

  p = sub.add_parser(
      "n4", help="N4 bias-field correction (JAX or SimpleITK backend)",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="N4 bias-field correction of a 2-D or 3-D NIfTI. Both backends take the same "
                  "settings (SimpleITK's defaults, shrink 4) and the same mask (--mask, else Otsu's "
                  "threshold); voxels <= 0 are left out of the fit. The field is estimated on the "
                  "shrunk image and evaluated at full resolution; OUTPUT = INPUT / field keeps the "
                  "input's header and affine, is written atomically, and the input is never modified.",
      epilog="examples:\n"
             "  mri-jax n4 t1.nii.gz t1_n4.nii.gz\n"
             "  mri-jax n4 t1.nii.gz t1_n4.nii.gz --backend sitk --save-field field.nii.gz\n"
             "  mri-jax n4 t1.nii.gz t1_n4.nii.gz --mask brain.nii.gz --iterations 50,50,50 "
             "--spline-distance 100")
  p.add_argument("input", help="image to correct (.nii or .nii.gz, 2-D or 3-D)")
  p.add_argument("output", help="corrected image to write (.nii or .nii.gz)")
  p.add_argument("--backend", choices=("jax", "sitk"), default=_defaults(file_jobs.n4_nifti)["backend"],
                 help="jax (compiled, fast; default) or sitk (SimpleITK's N4, the reference)")
  p.add_argument("--mask", metavar="M", help="foreground mask NIfTI (voxels > 0); default: Otsu")
  p.add_argument("--save-field", metavar="F", help="also write the multiplicative bias field (INPUT = OUTPUT × F)")
  p.add_argument("--overwrite", action="store_true", help="replace OUTPUT / --save-field if they exist")
  from mri_jax.n4 import N4Settings

  n4d = N4Settings()
  g = p.add_argument_group("N4 settings (defaults: SimpleITK's, with shrink 4)")
  g.add_argument("--shrink", type=int, default=n4d.shrink, help="shrink factor, 1-16 (per axis, lowered so each "
                 "shrunk axis keeps >= --min-shrunk voxels); default %(default)s")
  g.add_argument("--min-shrunk", type=int, default=n4d.min_shrunk, metavar="N",
                 help="voxels each axis keeps after shrinking (the shrink factor is lowered on shorter axes); "
                      "default %(default)s; restore uses 64, which removes much more of the field on images "
                      "under 256 px")
  g.add_argument("--iterations", type=_int_list, default=n4d.iterations, metavar="N,N,...",
                 help="maximum iterations per fitting level; the count of numbers is the number of "
                      f"levels; default {','.join(map(str, n4d.iterations))}")
  g.add_argument("--convergence", type=float, default=n4d.convergence, help="convergence threshold; default %(default)s")
  g.add_argument("--control-points", type=int, default=n4d.control_points, metavar="N",
                 help="B-spline control points per axis at the first level, 4-64; default %(default)s")
  g.add_argument("--spline-distance", type=float, default=n4d.spline_distance, metavar="MM",
                 help="distance between first-level control points in mm (overrides --control-points)")
  g.add_argument("--bins", type=int, default=n4d.bins, help="histogram bins; default %(default)s")
  g.add_argument("--fwhm", type=float, default=n4d.fwhm, help="bias-field FWHM for histogram sharpening; default %(default)s")
  g.add_argument("--wiener", type=float, default=n4d.wiener, help="Wiener filter noise; default %(default)s")
  p.set_defaults(func=_cmd_n4)

  p = sub.add_parser(
      "build-data", help="build the mri_pairs TFDS dataset (array_record, no TensorFlow)",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Generate (clean, corrupted, true bias field, N4-corrected, N4 log field, mask) "
                  "examples split by subject and write them as a TFDS dataset in array_record "
                  "format. Configs: slices128, slices256, patches64 (synthetic subjects from the "
                  "MNI152 maps in nilearn; no download), tiny (smoke tests), slices128_nifti and "
                  "slices256_nifti (your NIfTI files under --manual-dir). A built config is reused.",
      epilog="examples:\n"
             "  mri-jax build-data --config tiny --data-dir data\n"
             "  mri-jax build-data --config slices128 --data-dir ~/tensorflow_datasets --n4-backend sitk\n"
             "  mri-jax build-data --config slices256_nifti --manual-dir IXI-T1 --data-dir data")
  p.add_argument("--config", required=True, help="builder config (see above)")
  p.add_argument("--data-dir", required=True, help="TFDS data directory to write into")
  p.add_argument("--manual-dir", help="folder of .nii/.nii.gz files (the *_nifti configs only)")
  p.add_argument("--n4-backend", choices=("jax", "sitk", "none"), help="override the N4 backend")
  p.add_argument("--seed", type=int, help="override the config's seed")
  p.add_argument("--subjects", type=_int_list, metavar="TRAIN,VAL,TEST",
                 help="override synthetic subjects per split")
  p.set_defaults(func=_cmd_build_data)

  p = sub.add_parser(
      "train", help="train the restorer (autoencoder, then latent diffusion) from a config",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Train on every device (data parallel over a mesh), resuming from the latest "
                  "checkpoint in WORKDIR. Override any config field with --config.a.b=value. "
                  "WORKDIR gets config.json, metrics.jsonl and checkpoints/; a WORKDIR holding a run "
                  "with another model/schedule/data config is refused.",
      epilog="examples:\n"
             "  mri-jax train --config configs/tiny.py --workdir runs/tiny --config.data.data_dir=data\n"
             "  mri-jax train --config configs/default.py --workdir runs/default --config.optimizer.lr=1e-4")
  p.add_argument("--config", required=True, help="config file, optionally with ':arg'")
  p.add_argument("--workdir", required=True, help="run directory (created; resumed when it holds a run)")
  p.add_argument("--init-from", metavar="RUN",
                 help="a finished run with the same config except the fidelity path: a new WORKDIR "
                      "starts at the fidelity stage with RUN's autoencoder and UNet (as a run from "
                      "scratch would have them), so only the fidelity path is trained (multi-host: RUN on "
                      "storage every host reads)")
  p.add_argument("--warm-start", metavar="WEIGHTS",
                 help="fine-tune: a new WORKDIR starts from the networks of WEIGHTS (a folder written "
                      "by `mri-jax export-weights`, e.g. mri_jax/weights/default, or a run's workdir) "
                      "instead of random ones, with fresh optimisers, and trains every stage of the "
                      "config on its data (set a stage's steps to 0 to keep that network)")
  g = p.add_argument_group("multi-host (jax.distributed.initialize; run the same command on every host)")
  g.add_argument("--distributed", action="store_true",
                 help="initialise jax.distributed, detecting the cluster (Cloud TPU pod, SLURM, Open MPI)")
  g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator service")
  g.add_argument("--num-processes", type=int, metavar="N", help="processes in the job")
  g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 … N-1")
  g.add_argument("--init-timeout", type=float, metavar="S",
                 help="seconds to wait for the coordinator, then one error line (default: 60 with "
                      "--coordinator, JAX's 300 when detected)")
  p.set_defaults(func=_cmd_train)

  p = sub.add_parser(
      "ablations", help="one table of training runs' last validation scores (ablations)",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Collect the last validation scores (restored / N4 / corrupted SSIM and PSNR vs "
                  "clean, and the autoencoder ceiling) and the ablation axes (space, N4 conditioning, "
                  "schedule, T, K, dtype) of training workdirs into one table. A RUN is a workdir or a "
                  "folder of workdirs. Prints markdown; --markdown/--csv/--plot also write files.",
      epilog="example:\n"
             "  mri-jax ablations runs/ablations --markdown ablations.md --plot ablations.png")
  p.add_argument("runs", nargs="+", metavar="RUN", help="training workdir, or a folder of them")
  p.add_argument("--markdown", metavar="FILE", help="write the table as markdown")
  p.add_argument("--csv", metavar="FILE", help="write the table as CSV")
  p.add_argument("--plot", metavar="PNG", help="bar chart of SSIM / PSNR per run")
  p.set_defaults(func=_cmd_ablations)

  rd = _defaults(restore.restore_nifti)
  p = sub.add_parser(
      "restore", help="remove noise and bias field from NIfTI / DICOM scans with the restorer",
      usage="mri-jax restore [options] INPUT OUTPUT\n       mri-jax restore [options] INPUT [INPUT ...] --output-dir DIR",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Restore 2-D or 3-D magnitude scans (X×Y×1 counts as 2-D). An INPUT is a NIfTI file, a DICOM "
                  "file, or a folder holding a DICOM series (read with SimpleITK's series reader; the affine is "
                  "converted from DICOM's LPS to NIfTI's RAS). With --output-dir, INPUTs may also be folders of "
                  "such files; each is restored into DIR under its own name (DICOM: <folder>_s<series>_<description>"
                  ".nii.gz), one line per file, and one file's failure does not stop the others (the exit code "
                  "is non-zero at the end). 3-D volumes are corrected by one 3-D N4 and restored slice by slice "
                  "along --axis (default: the thickest voxels, else the axial axis from the affine); each slice "
                  "is scaled to foreground mean 1, padded, restored in K network passes, cropped and scaled "
                  "back, so OUTPUT is on the input's intensity scale. OUTPUT keeps the input's header, affine "
                  "and voxel size, is written atomically, and inputs are never modified. Without --checkpoint "
                  "the default weights shipped in the package are used (no download). Compiled programs are "
                  "kept in a per-user cache (MRI_JAX_CACHE_DIR, default ~/.cache/mri_jax/xla; 'off' disables "
                  "it), so only the first run on a machine compiles.",
      epilog="examples:\n"
             "  mri-jax restore scan.nii.gz restored.nii.gz\n"
             "  mri-jax restore scans/*.nii.gz dicom_series_folder/ --output-dir restored/\n"
             "  mri-jax restore dicom_folder/ restored.nii.gz --series 1.3.12.2.1107.5.2.43.66112.2016...\n"
             "  mri-jax restore scan.nii.gz restored.nii.gz --steps 4 --n4 sitk --save-field field.nii.gz\n"
             "  mri-jax restore scan.nii.gz restored.nii.gz --checkpoint runs/default")
  p.add_argument("paths", nargs="+", metavar="PATH",
                 help="INPUT OUTPUT, or INPUTs with --output-dir (NIfTI, DICOM file, DICOM series folder)")
  p.add_argument("-o", "--output-dir", metavar="DIR", default=None,
                 help="restore every INPUT into DIR (created if needed)")
  p.add_argument("--series", metavar="UID", default=rd["series"],
                 help="the DICOM series to read when the INPUT folder holds several (the error lists them)")
  p.add_argument("--steps", type=int, default=None, metavar="K",
                 help="sampler steps, 1 … the model's schedule length (default: the model's "
                      "configured single pass)")
  p.add_argument("--seed", type=int, default=rd["seed"], help="sampler seed (default %(default)s)")
  p.add_argument("--checkpoint", metavar="DIR",
                 help="a training workdir (latest checkpoint) or an `export-weights` folder; "
                      "default: the shipped weights")
  p.add_argument("--fast", action="store_true", help=FAST_HELP)
  p.add_argument("--n4", choices=restore.N4_CHOICES, default=rd["n4"],
                 help="N4 backend of the conditioning (default %(default)s; none only for models trained "
                      "without N4)")
  p.add_argument("--batch-size", type=int, default=rd["batch_size"], metavar="B",
                 help="slices per network call (default %(default)s)")
  p.add_argument("--n4-mode", choices=restore.N4_MODES, default=rd["n4_mode"],
                 help="N4 of a volume: one 3-D N4 (volume; continuous field, no slice banding), per slice "
                      "(slices), or auto = volume for >= 8 slices (default %(default)s)")
  p.add_argument("--axis", type=int, choices=(0, 1, 2), default=None,
                 help="slicing axis of a 3-D volume (default: auto)")
  p.add_argument("--independent-slices", action="store_true", default=rd["independent_slices"],
                 help="the 3-D input is a stack of unrelated 2-D images (different scans or subjects): Otsu's "
                      "threshold and N4 per slice instead of one for the volume, and every slice with enough foreground "
                      "is restored (none is treated as a volume's cap)")
  p.add_argument("--fidelity", type=float, default=rd["fidelity"], metavar="W",
                 help="weight in [0, 1] of the fidelity path (input pixels fed past the latent) for models "
                      "that have one: 0 = the plain decoder; default: the model's (1)")
  p.add_argument("--lowfreq", type=float, default=rd["lowfreq"], metavar="SIGMA",
                 help="low-frequency fix: content coarser than SIGMA pixels comes from the N4-corrected input "
                      "(intensities follow the input; the network adds the finer detail); 0 = off; "
                      "default %(default)s")
  p.add_argument("--noise-clamp", type=float, default=rd["noise_clamp"], metavar="K",
                 help="the output stays within K noise σ (estimated from the input) of the N4-corrected input at "
                      "every voxel: noise is removed, anatomy cannot be erased or invented beyond what noise "
                      "explains; 0 = off; default %(default)s")
  p.add_argument("--no-blend", dest="blend", action="store_false", default=rd["blend"],
                 help="turn off the SURE blend (on by default): the output is the N4-corrected input + α × (the "
                      "network's output − it), one α in [0, 1] per band (coarser / finer than 1 px) and slice (per "
                      "volume with a 3-D N4), chosen from the input alone by Stein's unbiased risk estimate, so "
                      "where the network would do worse than the input α falls towards 0; costs one more "
                      "network pass (for a volume with a 3-D N4, on the --batch-size slices around its middle)")
  p.add_argument("--no-wiener", dest="wiener", action="store_false", default=rd["wiener"],
                 help="inside the blend, do not filter first (on by default): the network's output is the pilot of "
                      "an empirical Wiener filter of the N4-corrected input (8×8 DCT blocks, as BM3D's second "
                      "step) that keeps the input's own pixels where the pilot shows structure and removes noise "
                      "where it is flat; the blend then weighs that filtered image. No effect with --no-blend")
  p.add_argument("--keep-noise-floor", dest="noise_floor", action="store_false", default=rd["noise_floor"],
                 help="do not remove the magnitude's noise floor (removed by default, last): the root sum of "
                      "squares of L coils raises dark tissue and air by up to √2·Γ(L+½)/Γ(L)·σ (1.25σ for one coil, "
                      "8σ for 32); each slice's L and σ are read from its air (else one coil and the input's σ) and "
                      "the output is mapped back through the inverse of the non-central χ mean")
  p.add_argument("--field-net", dest="field_net", type=float, default=rd["field_net"], metavar="W",
                 help="weight in [0, 1] of the field network: after N4, a small network trained on the simulator's "
                      "coil fields predicts the smooth bias N4 left, and W × it is divided out as well; 0 = N4's "
                      "field alone; default %(default)s")
  p.add_argument("--save-field", metavar="F",
                 help="also write the multiplicative bias field used (N4's, refined by the field network)")
  p.add_argument("--save-residual", metavar="F",
                 help="also write the consistency residual (input − field × restored) / σ̂: noise-like where "
                      "the restorer only removed noise and bias")
  p.add_argument("--save-uncertainty", metavar="F",
                 help="also write the per-voxel std of the restored image over --uncertainty-seeds seeds")
  p.add_argument("--uncertainty-seeds", type=int, default=rd["uncertainty_seeds"], metavar="N",
                 help="sampling seeds for --save-uncertainty, >= 2 (default %(default)s)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace OUTPUT (or the files in --output-dir) and the --save-* files if they exist")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(func=_cmd_restore)

  p = sub.add_parser(
      "export-weights", help="write a training run's inference weights (config.json + model.npz)",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Export the latest checkpoint of a training WORKDIR as config.json + model.npz "
                  "(autoencoder and EMA UNet, float32): what `restore --checkpoint` and the "
                  "shipped default weights (mri_jax/weights/default) are.",
      epilog="example:\n  mri-jax export-weights runs/default mri_jax/weights/default")
  p.add_argument("workdir", help="training run directory")
  p.add_argument("out_dir", help="folder to write (created)")
  p.set_defaults(func=_cmd_export_weights)

  ed = _defaults(evaluate.evaluate)
  p = sub.add_parser(
      "evaluate", help="compare the restorer with N4 / N4+NLM / the oracle; faithfulness tests",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="On held-out synthetic subjects (the mri_pairs test split under --data-dir) and on "
                  "a real scan never used in training (dipy's S0_10slices, corrupted by the "
                  "simulator), compare in one run: the corrupted input, SimpleITK N4 (shrink 4), "
                  "N4 + dipy Rician NLM, N4 + scikit-image NLM, N4 + BM3D (if installed), the oracle "
                  "division by the true field, and the restorer with 1 and K steps. Metrics inside "
                  "the foreground after normalising by its mean: SSIM, PSNR, bias residual, time "
                  "per slice. Writes results.md, results.json and montage.png into OUTDIR. "
                  "Needs the eval extra: pip install 'mri_jax[eval]' (dipy, scikit-image, PyWavelets, bm3d, heudiconv, pydicom).",
      epilog="examples:\n"
             "  mri-jax evaluate eval_out --data-dir data\n"
             "  mri-jax evaluate eval_out --data-dir data --faithfulness --steps 4 --checkpoint runs/default")
  p.add_argument("outdir", help="output directory (created)")
  p.add_argument("--data-dir", help="TFDS data directory holding --dataset (omit: real images only)")
  p.add_argument("--dataset", default=ed["dataset"], help="dataset name (default %(default)s)")
  p.add_argument("--split", default=ed["split"], choices=("test", "validation"), help="held-out split (default %(default)s)")
  p.add_argument("--slices", type=int, default=ed["slices"], help="synthetic slices, spread over the split (default %(default)s)")
  p.add_argument("--steps", type=int, default=ed["steps"], metavar="K",
                 help="the multi-step setting compared with K = 1 (default %(default)s)")
  p.add_argument("--checkpoint", metavar="DIR", help="workdir or exported weights (default: shipped weights)")
  p.add_argument("--fast", action="store_true", help=FAST_HELP)
  p.add_argument("--no-real", action="store_true", help="skip the real-image test sets (same as --real-set none)")
  p.add_argument("--real-set", choices=evaluate.REAL_SETS, default=ed["real_set"],
                 help="real images: full = the real-scan validation set (7 groups of real scans shipped in the "
                      "dipy, nibabel and heudiconv wheels, each corrupted by the simulator and by an independent "
                      "model; also writes real_scans.png), dipy = dipy's S0_10slices only (simulator), none "
                      "(default %(default)s)")
  p.add_argument("--real-slices", type=int, default=ed["real_slices"], metavar="N",
                 help="at most N slices per real-scan group, >= 2 (default %(default)s)")
  p.add_argument("--faithfulness", action="store_true",
                 help="also run the lesion, seed-variance, 1-vs-K and background tests")
  p.add_argument("--seed", type=int, default=ed["seed"], help="seed of corruption, lesions and sampling (default %(default)s)")
  p.set_defaults(func=_cmd_evaluate)
  return parser


# Commands that compile JAX programs: they use the persistent compilation cache (`mri_jax.compile_cache`).
_COMPILING = ("restore", "demo", "evaluate", "simulate", "n4", "build-data", "train", "train-field", "export-weights")


def main(argv: list[str] | None = None) -> int:
  """Runs `mri-jax ARGV`; returns the exit code (0 ok, 2 user error with one line on stderr)."""
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if extra and getattr(args, "command", None) != "train":
    parser.parse_args(argv)  # reports the unknown arguments as usual
  args.overrides = extra
  try:
    if args.command in _COMPILING:
      from mri_jax import compile_cache

      compile_cache.enable()
    return args.func(args)
  except UserInputError as err:
    print(f"mri-jax {args.command}: error: {err}", file=sys.stderr)
    return EXIT_USER_ERROR
  except KeyboardInterrupt:
    print("mri-jax: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
