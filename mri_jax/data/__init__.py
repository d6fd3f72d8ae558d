"""Clean anatomy sources (the embedded MNI152 default; NIfTI folders come with the data builder)."""

from mri_jax.data.anatomy import Anatomy, load_mni152

__all__ = ["Anatomy", "load_mni152"]
