"""TFDS builder of synthetic (clean, corrupted, true field, N4) MRI pairs.

Written in the `array_record` format, so it builds and reads without TensorFlow:

  mri-jax build-data --config slices128 --data-dir ~/tensorflow_datasets
  Builder(config="slices128", data_dir=..., file_format="array_record").download_and_prepare()

(`tfds build` itself imports TensorFlow, which this project never installs.)

and is read with `tfds.data_source('mri_pairs/slices128', data_dir=...)` (see
`mri_jax.data.pipeline`). The examples come from `mri_jax.data.pairs.generate`; the default
source is synthetic subjects from the MNI152 maps in nilearn (no download). The `*_nifti` configs
read your own NIfTI files from `manual_dir` (e.g. the IXI T1/T2/PD download). The `mixed*` configs
hold random label scenes (heads with skull and scalp, body-like scenes) with random per-label
contrast, framing, resolution and field of view, corrupted with the 'wide' ranges (issue 14); the
other configs are unchanged, for ablations.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mri_jax.data import pairs


@dataclasses.dataclass
class MriPairsConfig(tfds.core.BuilderConfig):
  """A builder config: the generation settings (`pairs.PairsConfig`) and the anatomy source."""

  pairs: pairs.PairsConfig = dataclasses.field(default_factory=pairs.PairsConfig)
  source: str = "synthetic"  # or "nifti" (files under manual_dir)


def _config(name, description, source="synthetic", **kw):
  return MriPairsConfig(name=name, description=description, source=source, pairs=pairs.PairsConfig(**kw))


BUILDER_CONFIGS = [
    _config("slices128", "2-D axial slices 128² at 2 mm from 200/20/20 synthetic subjects, 16 each.",
            dims=2, size=128, voxel_mm=2, slices_per_subject=16, subjects=(200, 20, 20)),
    _config("slices256", "2-D axial slices 256² at 1 mm from 100/10/10 synthetic subjects, 16 each.",
            dims=2, size=256, voxel_mm=1, slices_per_subject=16, subjects=(100, 10, 10)),
    _config("patches64", "3-D patches 64³ at 2 mm from 100/10/10 synthetic subjects, 4 each.",
            dims=3, size=64, voxel_mm=2, slices_per_subject=4, subjects=(100, 10, 10)),
    _config("tiny", "Tests and smoke runs: 48² slices at 4 mm, 2/1/1 subjects, 4 slices each.",
            dims=2, size=48, voxel_mm=4, slices_per_subject=4, subjects=(2, 1, 1), coils=(1, 8),
            n4_iterations=(10, 10)),
    _config("mixed128", "2-D 128² mixed anatomy (heads at 2 mm + body-like scenes), random contrast, "
            "zoom 0.5-3.5x, crops, embedded 48-128 px images, wide corruption; 250/25/25 x 16.",
            anatomy="mixed", corruption="wide", dims=2, size=128, canvas=128, voxel_mm=2,
            slices_per_subject=16, subjects=(250, 25, 25), coils=(1, 2, 4, 8, 16, 32)),
    _config("mixed128fine", "mixed128 finer per pixel: zoom 0.5-1.6x, crops 1.5-2.5x, fewer "
            "low-resolution images, pixel-scale texture and thin lines (sulci, vessels, septa); 250/25/25 x 16.",
            anatomy="mixed", corruption="wide", dims=2, size=128, canvas=128, voxel_mm=2,
            slices_per_subject=16, subjects=(250, 25, 25), coils=(1, 2, 4, 8, 16, 32), detail=True),
    _config("mixed256", "2-D 256² multi-size mixed anatomy (1 mm canvas): embedded images of "
            "48-256 px per side in 256² records; wide corruption; 60/6/6 x 16.",
            anatomy="mixed", corruption="wide", dims=2, size=256, canvas=256, voxel_mm=1,
            slices_per_subject=16, subjects=(60, 6, 6), coils=(1, 2, 4, 8, 16, 32)),
    _config("mixed_tiny", "Tests: 48² mixed anatomy at 4 mm, 2/1/1 subjects x 4, wide corruption.",
            anatomy="mixed", corruption="wide", dims=2, size=48, canvas=48, voxel_mm=4,
            slices_per_subject=4, subjects=(2, 1, 1), coils=(1, 8), n4_iterations=(10, 10)),
    _config("slices128_nifti", "2-D slices 128² at 2 mm from your NIfTI files (manual_dir).",
            source="nifti", dims=2, size=128, voxel_mm=2, slices_per_subject=16),
    _config("slices256_nifti", "2-D slices 256² at 1 mm from your NIfTI files (manual_dir).",
            source="nifti", dims=2, size=256, voxel_mm=1, slices_per_subject=16),
]


class Builder(tfds.core.GeneratorBasedBuilder):
  """mri_pairs: clean / corrupted / true bias field / N4 examples, split by subject."""

  # Still 1.0.0: the mixed* configs are new names and the earlier configs' records are unchanged,
  # so datasets built before them stay readable.
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: synthetic MNI152 subjects, coil-physics corruption, N4."}
  BUILDER_CONFIGS = BUILDER_CONFIGS
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Only the *_nifti configs need it: put .nii/.nii.gz files (any folder depth) in manual_dir. "
      "Subjects are split 80/10/10 by a hash of the file name without its contrast tag.")

  def _info(self) -> tfds.core.DatasetInfo:
    shape = self.builder_config.pairs.shape
    image = lambda dtype=np.float32: tfds.features.Tensor(
        shape=shape, dtype=dtype, encoding=tfds.features.Encoding.ZLIB)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "clean": image(), "corrupted": image(), "bias": image(), "n4_corrected": image(),
            "n4_log_field": image(), "mask": image(np.uint8),
            "subject": tfds.features.Text(), "contrast": tfds.features.Text(),
            "slice_index": tfds.features.Scalar(np.int64),
            "n_coils": tfds.features.Scalar(np.int32),
            "noise_sigma": tfds.features.Scalar(np.float32),
            "bias_log_std": tfds.features.Scalar(np.float32),
        }),
        supervised_keys=("corrupted", "clean"),
        homepage="https://github.com/mri-jax/mri_jax",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = dl_manager.manual_dir if self.builder_config.source == "nifti" else None
    return {split: self._generate_examples(split, manual) for split in pairs.SPLITS}

  def _generate_examples(self, split, manual_dir):
    yield from pairs.generate(self.builder_config.pairs, split, manual_dir)
