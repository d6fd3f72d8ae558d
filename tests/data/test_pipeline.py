"""The mri_pairs builder (tiny config, array_record, no TensorFlow) and the grain pipeline."""

import importlib.util

import jax
import nibabel as nib
import numpy as np
import pytest

from mri_jax.data import build
from mri_jax.errors import UserInputError
from mri_jax.data import pairs, pipeline


@pytest.fixture
def built(tiny_dataset):
  return tiny_dataset


def test_builds_without_tensorflow_and_splits_are_subject_disjoint(built):
  data_dir, summary = built
  assert importlib.util.find_spec("tensorflow") is None
  assert summary["splits"] == {"train": 8, "validation": 4, "test": 4}
  subjects = {}
  for split in pairs.SPLITS:
    src = pipeline.data_source("mri_pairs/tiny", split, data_dir=data_dir)
    subjects[split] = {src[i]["subject"] for i in range(len(src))}
  assert len(subjects["train"]) == 2 and len(subjects["validation"]) == 1
  assert not (subjects["train"] & subjects["validation"]) and not (subjects["train"] & subjects["test"])
  assert not (subjects["validation"] & subjects["test"])


def test_records_are_consistent_pairs(built):
  data_dir, _ = built
  src = pipeline.data_source("mri_pairs/tiny", "train", data_dir=data_dir)
  for i in range(len(src)):
    e = src[i]
    for k in pipeline.IMAGE_FIELDS:
      assert e[k].shape == (48, 48) and np.all(np.isfinite(e[k])), k
    m = e["mask"] > 0
    assert m.mean() > 0.1
    assert e["n_coils"] in (1, 8) and 0.0 < e["noise_sigma"] < 0.2
    bright = m & (e["clean"] > 0.5 * e["clean"][m].max())
    ratio = np.median(e["corrupted"][bright] / (e["clean"][bright] * e["bias"][bright]))
    assert abs(ratio - 1.0) < 0.15  # corrupted ≈ clean × true field (+ noise)
    np.testing.assert_allclose(e["n4_corrected"] * np.exp(e["n4_log_field"]), e["corrupted"],
                               rtol=1e-4, atol=1e-5)


def test_generation_is_deterministic():
  cfg = pairs.PairsConfig(size=32, voxel_mm=6, slices_per_subject=2, subjects=(1, 1, 1), coils=(4,),
                          n4_iterations=(3,))
  a = list(pairs.generate(cfg, "test"))
  b = list(pairs.generate(cfg, "test"))
  for (ka, ea), (kb, eb) in zip(a, b):
    assert ka == kb
    for k in pipeline.IMAGE_FIELDS:
      np.testing.assert_array_equal(ea[k], eb[k])


def test_loader_shuffles_by_seed_and_shards_batches_over_the_mesh(built):
  data_dir, _ = built
  def order(seed):
    loader = pipeline.make_loader("mri_pairs/tiny", "train", data_dir=data_dir, global_batch=8,
                                  seed=seed, num_epochs=1)
    return [b["slice_index"].tolist() + b["noise_sigma"].tolist() for b in loader]
  assert order(1) == order(1)
  assert order(1) != order(2)
  loader = pipeline.make_loader("mri_pairs/tiny", "train", data_dir=data_dir, global_batch=8, seed=0)
  batch = next(iter(loader))
  mesh = pipeline.data_mesh()
  g = pipeline.to_global(batch, mesh)
  assert g["corrupted"].shape == (8, 48, 48)
  assert len(g["corrupted"].sharding.device_set) == jax.device_count() == 8
  np.testing.assert_array_equal(np.asarray(g["clean"]), batch["clean"])


def test_loader_with_worker_processes_gives_the_same_batches(built):
  data_dir, _ = built
  kw = dict(data_dir=data_dir, global_batch=4, seed=3, num_epochs=1, fields=("clean", "n_coils"))
  local = [b["clean"] for b in pipeline.make_loader("mri_pairs/tiny", "train", **kw)]
  workers = [b["clean"] for b in pipeline.make_loader("mri_pairs/tiny", "train", worker_count=1, **kw)]
  assert len(local) == len(workers) == 2
  for x, y in zip(local, workers):
    np.testing.assert_array_equal(x, y)


def test_bad_batch_and_config_errors(built):
  data_dir, _ = built
  with pytest.raises(ValueError, match="fewer than one global batch"):
    pipeline.make_loader("mri_pairs/tiny", "test", data_dir=data_dir, global_batch=64, seed=0)
  with pytest.raises(UserInputError, match="unknown config"):
    build.build_data("nope", data_dir=data_dir)


def test_nifti_source_keeps_every_scan_of_a_subject_in_one_split(tmp_path):
  rng = np.random.default_rng(0)
  names = []
  for s in range(12):
    for contrast in ("T1", "T2"):
      vol = np.zeros((30, 34, 24), np.float32)
      vol[6:24, 6:28, 4:20] = rng.uniform(50, 100)
      name = f"IXI{s:03d}-Guys-{1000 + s}-{contrast}.nii.gz"
      nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 2.5, 1.0])), str(tmp_path / name))
      names.append(name)
  from pathlib import Path
  assert pairs.subject_id_and_contrast(Path("IXI002-Guys-0828-T1.nii.gz")) == ("IXI002-Guys-0828", "T1")
  assert pairs.subject_id_and_contrast(Path("sub-01_T2w.nii")) == ("sub-01", "T2W")
  assert pairs.subject_id_and_contrast(Path("scan.nii.gz")) == ("scan", "unknown")
  splits = {}
  for name in names:
    sid, _ = pairs.subject_id_and_contrast(Path(name))
    splits.setdefault(sid, set()).add(pairs.split_of(sid))
  assert all(len(v) == 1 for v in splits.values())
  assert {next(iter(v)) for v in splits.values()} >= {"train"}
  vol, mask = pairs.nifti_subject(tmp_path / names[0], 2)
  assert vol.shape == (30, 34, 30)  # 2.5 mm slices resampled to 2 mm
  assert mask.any() and abs(np.percentile(vol[mask], 99.5) - 1.0) < 1e-3


def test_on_device_corruption_inside_jit_over_the_mesh(built):
  data_dir, _ = built
  loader = pipeline.make_loader("mri_pairs/tiny", "train", data_dir=data_dir, global_batch=8, seed=0,
                                fields=("clean", "mask"))
  batch = pipeline.to_global(next(iter(loader)), pipeline.data_mesh())
  from mri_jax import n4

  settings = n4.N4Settings(iterations=(5, 5))

  @jax.jit
  def step(key, b):
    return pipeline.corrupt_on_device(key, b["clean"], b["mask"], n_coils=4, n4_settings=settings)

  a = step(jax.random.key(0), batch)
  again = step(jax.random.key(0), batch)
  other = step(jax.random.key(1), batch)
  assert a["corrupted"].shape == (8, 48, 48)
  assert len(a["corrupted"].sharding.device_set) == 8  # stays sharded over the data axis
  np.testing.assert_array_equal(np.asarray(a["corrupted"]), np.asarray(again["corrupted"]))
  assert not np.allclose(np.asarray(a["corrupted"]), np.asarray(other["corrupted"]))
  np.testing.assert_allclose(np.asarray(a["n4_corrected"] * np.exp(a["n4_log_field"])),
                             np.asarray(a["corrupted"]), rtol=1e-4, atol=1e-5)
  m = np.asarray(batch["mask"]) > 0
  ratio = np.asarray(a["corrupted"])[m].mean() / (np.asarray(batch["clean"]) * np.asarray(a["bias"]))[m].mean()
  assert abs(ratio - 1.0) < 0.15
