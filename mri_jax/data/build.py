"""`mri-jax build-data`: builds a config of the `mri_pairs` TFDS dataset (array_record, no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

from mri_jax.errors import UserInputError
from mri_jax.io import nifti


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
  nifti.check_folder(data_dir, "--data-dir")
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
