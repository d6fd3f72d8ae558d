"""The `mri_pairs` TFDS dataset (array_record; read with `tfds.data_source` + grain)."""

from tfds_builders.mri_pairs.mri_pairs_dataset_builder import BUILDER_CONFIGS, Builder, MriPairsConfig

__all__ = ["BUILDER_CONFIGS", "Builder", "MriPairsConfig"]
