"""Input pipeline: `tfds.data_source` + grain → globally sharded `jax.Array` batches.

  loader = pipeline.make_loader("mri_pairs/slices128", "train", data_dir=..., global_batch=64, seed=0)
  mesh = pipeline.data_mesh()
  for batch in loader:                       # per-process numpy batches
    batch = pipeline.to_global(batch, mesh)  # one jax.Array per field, sharded on the 'data' axis

Every process reads its own shard of the records (`grain.ShardByJaxProcess`), shuffled with the
seed and repeated for `num_epochs` (None = forever); the per-process batch is
global_batch / process_count. No TensorFlow is involved.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

IMAGE_FIELDS = ("clean", "corrupted", "bias", "n4_corrected", "n4_log_field", "mask")
SCALAR_FIELDS = ("slice_index", "n_coils", "noise_sigma", "bias_log_std")


def _absl_flags_parsed() -> None:
  """grain's worker processes read absl flags; parse them once if nobody has (stack note)."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS(sys.argv[:1])


def data_source(name: str, split: str, *, data_dir=None):
  """The random-access source of a built dataset (e.g. 'mri_pairs/slices128')."""
  import tensorflow_datasets as tfds

  return tfds.data_source(name, split=split, data_dir=data_dir)


def _select(example: dict, fields) -> dict:
  return {k: np.asarray(example[k], np.float32 if k in IMAGE_FIELDS else None) for k in fields}


def make_loader(name: str, split: str, *, data_dir=None, global_batch: int, seed: int,
                num_epochs: int | None = None, shuffle: bool = True, worker_count: int = 0,
                fields=IMAGE_FIELDS + SCALAR_FIELDS, source=None):
  """A grain DataLoader of per-process batches (dicts of numpy arrays) from a built dataset.

  Args:
    name, split, data_dir: the dataset (`tfds.data_source` arguments); or pass `source`.
    global_batch: examples per step over all processes (divisible by the process count).
    seed: shuffle seed (same seed ⇒ same order).
    num_epochs: passes over the data; None repeats forever.
    worker_count: grain worker processes for decoding and prefetch (0 = in this process).
    fields: the record fields to keep (images as float32).
  """
  import grain.python as grain

  n_proc = jax.process_count()
  if global_batch % n_proc:
    raise ValueError(f"global batch {global_batch} is not divisible by {n_proc} processes")
  source = data_source(name, split, data_dir=data_dir) if source is None else source
  per_process = global_batch // n_proc
  if len(source) < per_process * n_proc:
    raise ValueError(f"{split} has {len(source)} examples, fewer than one global batch ({global_batch})")
  if worker_count > 0:
    _absl_flags_parsed()
  sampler = grain.IndexSampler(num_records=len(source), shard_options=grain.ShardByJaxProcess(drop_remainder=True),
                               shuffle=shuffle, num_epochs=num_epochs, seed=seed)

  class Select(grain.MapTransform):
    def map(self, example):
      return _select(example, fields)

  return grain.DataLoader(data_source=source, sampler=sampler,
                          operations=[Select(), grain.Batch(per_process, drop_remainder=True)],
                          worker_count=worker_count)


def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh over every device (all processes) with the axis named 'data'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def to_global(batch: dict, mesh: Mesh) -> dict:
  """Per-process numpy batches → global `jax.Array`s sharded on the leading axis over 'data'."""
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
