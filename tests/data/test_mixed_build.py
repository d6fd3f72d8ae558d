"""The mixed_tiny config builds, reads back through the trainer's loader, keeps splits disjoint and
is deterministic. N4 is switched off and one coil count kept here so the build takes seconds; the
config itself (N4 on, two coil counts) builds the same way."""

import dataclasses

import numpy as np
import pytest

from mri_jax.data import pairs, pipeline


def _tiny():
  from tfds_builders import mri_pairs

  base = {c.name: c for c in mri_pairs.BUILDER_CONFIGS}["mixed_tiny"]
  return base, dataclasses.replace(base.pairs, n4_backend="none", coils=(8,))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  from tfds_builders import mri_pairs

  base, cfg = _tiny()
  config = mri_pairs.MriPairsConfig(name="mixed_tiny_test", description="test", source=base.source, pairs=cfg)
  data_dir = tmp_path_factory.mktemp("tfds")
  mri_pairs.Builder(config=config, data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return str(data_dir), cfg


def test_mixed_tiny_reads_back_through_make_loader(built):
  data_dir, cfg = built
  loader = pipeline.make_loader("mri_pairs/mixed_tiny_test", "train", data_dir=data_dir, global_batch=4,
                                seed=0, num_epochs=1)
  batch = next(iter(loader))
  for k in pipeline.IMAGE_FIELDS:
    assert batch[k].shape == (4, cfg.size, cfg.size) and batch[k].dtype == np.float32
  assert set(batch) == set(pipeline.IMAGE_FIELDS + pipeline.SCALAR_FIELDS)
  m = batch["mask"] > 0
  assert (m.sum((1, 2)) >= 16).all()
  assert all(c[mk].mean() > 0.01 for c, mk in zip(batch["clean"], m))


def test_splits_are_disjoint(built):
  data_dir, cfg = built
  seen = {}
  for split in pairs.SPLITS:
    src = pipeline.data_source("mri_pairs/mixed_tiny_test", split, data_dir=data_dir)
    assert len(src) == cfg.subjects[pairs.SPLITS.index(split)] * cfg.slices_per_subject
    seen[split] = [src[i] for i in range(len(src))]
  subjects = {s: {bytes(r["subject"]) for r in rs} for s, rs in seen.items()}
  assert not (subjects["train"] & subjects["validation"]) and not (subjects["train"] & subjects["test"])
  assert not (subjects["validation"] & subjects["test"])
  cleans = {s: [r["clean"].tobytes() for r in rs] for s, rs in seen.items()}
  assert not (set(cleans["train"]) & (set(cleans["validation"]) | set(cleans["test"])))


def test_same_config_same_data():
  _, cfg = _tiny()
  cfg = dataclasses.replace(cfg, subjects=(1, 0, 0))
  a = list(pairs.generate(cfg, "train"))
  b = list(pairs.generate(cfg, "train"))
  assert [k for k, _ in a] == [k for k, _ in b]
  for (_, x), (_, y) in zip(a, b):
    for f in ("clean", "corrupted", "bias", "mask"):
      np.testing.assert_array_equal(x[f], y[f])
