"""Data: the embedded MNI152 anatomy, synthetic subjects, dataset examples and the input pipeline.

Submodules: `anatomy` (MNI152 from nilearn, offline), `synth` (deformation + contrast + texture),
`pairs` (what the `mri_pairs` TFDS builder writes), `pipeline` (tfds.data_source + grain →
sharded jax.Arrays; on-device corruption). `synth`, `pairs` and `pipeline` are imported on use.
"""

from mri_jax.data.anatomy import Anatomy, load_mni152

__all__ = ["Anatomy", "load_mni152"]
