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
  """The random-access source of a built dataset (e.g. 'mri_pairs/slices128'). Never builds one:
  a missing dataset is an error (TFDS would otherwise try to generate it, in its TensorFlow format,
  into `data_dir`); build it with `mri-jax build-data`."""
  import tensorflow_datasets as tfds

  return tfds.data_source(name, split=split, data_dir=data_dir, download=False)


PROCESS_SHARDINGS = ("records", "global")  # see make_loader


def _select(example: dict, fields) -> dict:
  return {k: np.asarray(example[k], np.float32 if k in IMAGE_FIELDS else None) for k in fields}


def make_loader(name: str, split: str, *, data_dir=None, global_batch: int, seed: int,
                num_epochs: int | None = None, shuffle: bool = True, worker_count: int = 0,
                allow_small: bool = False, process_sharding: str = "records",
                fields=IMAGE_FIELDS + SCALAR_FIELDS, source=None):
  """A grain DataLoader of per-process batches (dicts of numpy arrays) from a built dataset.

  Args:
    name, split, data_dir: the dataset (`tfds.data_source` arguments); or pass `source`.
    global_batch: examples per step over all processes (divisible by the process count).
    seed: shuffle seed (same seed ⇒ same order).
    num_epochs: passes over the data; None repeats forever.
    allow_small: with num_epochs None, accept a split smaller than one batch (examples then repeat
      within a batch; validation of tiny datasets).
    worker_count: grain worker processes for decoding and prefetch (0 = in this process).
    fields: the record fields to keep (images as float32).
    process_sharding: how processes share the data (multi-host). "records": each process reads
      its own contiguous shard of the records and shuffles within it (grain's ShardByJaxProcess;
      the cheapest). "global": every process walks the same shuffled sequence of global batches
      and keeps its slice of each, so the global batches are the same for any process count (a
      2-process run sees exactly what a 1-process run sees) at the cost of every process
      reading every record.
  """
  import grain.python as grain

  n_proc = jax.process_count()
  if global_batch % n_proc:
    raise ValueError(f"global batch {global_batch} is not divisible by {n_proc} processes")
  source = data_source(name, split, data_dir=data_dir) if source is None else source
  per_process = global_batch // n_proc
  if len(source) < per_process * n_proc and not (allow_small and num_epochs is None):
    raise ValueError(f"{split} has {len(source)} examples, fewer than one global batch ({global_batch})")
  if worker_count > 0:
    _absl_flags_parsed()
  if process_sharding not in PROCESS_SHARDINGS:
    raise ValueError(f"process_sharding must be one of {PROCESS_SHARDINGS}, not {process_sharding!r}")
  shard = grain.ShardByJaxProcess(drop_remainder=True) if process_sharding == "records" else grain.NoSharding()
  sampler = grain.IndexSampler(num_records=len(source), shard_options=shard,
                               shuffle=shuffle, num_epochs=num_epochs, seed=seed)

  class Select(grain.MapTransform):
    def map(self, example):
      return _select(example, fields)

  operations = [Select()]
  if process_sharding == "records":
    operations.append(grain.Batch(per_process, drop_remainder=True))
  else:
    lo = jax.process_index() * per_process

    class Slice(grain.MapTransform):
      def map(self, batch):
        return {k: v[lo:lo + per_process] for k, v in batch.items()}

    operations += [grain.Batch(global_batch, drop_remainder=True), Slice()]
  return grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                          worker_count=worker_count)


def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh over every device (all processes) with the axis named 'data'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def to_global(batch: dict, mesh: Mesh) -> dict:
  """Per-process numpy batches → global `jax.Array`s sharded on the leading axis over 'data'."""
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def corrupt_on_device(key: jax.Array, clean: jax.Array, mask: jax.Array, *, n_coils: int = 8,
                      n4_settings=None, ranges=None) -> dict:
  """Fresh corruptions of a batch of clean images inside your jitted step (second input mode).

  Reads only clean images and masks from the dataset and runs the simulator and the JAX N4 on
  device, so every epoch sees new coil placements, fields and noise. Pure; call it inside
  `jax.jit` (a batch sharded on 'data' stays sharded).

  Args:
    key: PRNG key (fold in the step outside).
    clean, mask: (B, X, Y[, Z]) clean images and foreground masks (σ is relative to the mask mean).
    n_coils: receive coils (static).
    n4_settings: `N4Settings` (static); default 3 levels × 20 iterations. None of the fields is
      computed when it is False.
    ranges: corruption ranges (`physics.sampling.training_ranges()` by default).

  Returns:
    dict with 'corrupted', 'bias', 'n4_corrected', 'n4_log_field' (B, ...) and 'noise_sigma' (B,).
  """
  import jax.numpy as jnp

  from mri_jax import n4
  from mri_jax.data import pairs

  settings = n4.N4Settings(iterations=(20, 20, 20)) if n4_settings is None else n4_settings
  keys = jax.random.split(key, clean.shape[0])
  image, bias, sigma = pairs.simulate_batch(keys, clean, mask, n_coils, ranges)
  result = {"corrupted": image, "bias": bias, "noise_sigma": sigma}
  if settings is not False:
    p = n4.plan(clean.shape[1:], settings)
    res = jax.vmap(lambda x: n4.n4_traced(x, None, p, settings))(image)
    result.update(n4_corrected=res.corrected, n4_log_field=res.log_field)
  else:
    result.update(n4_corrected=image, n4_log_field=jnp.zeros_like(image))
  return result
