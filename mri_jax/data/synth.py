"""Synthetic subjects from tissue maps: smooth diffeomorphic deformation + MR contrast + texture.

So that a model does not learn one template's look, each subject (one PRNG key) gets:

1. A random smooth **diffeomorphism**: a stationary velocity field (Gaussian control values on a
   coarse lattice, cubic upsampling) integrated by scaling and squaring on a working grid, then
   upsampled to full resolution; tissue maps are resampled through it (linear interpolation).
2. **Contrast** from the MR signal equation of a spoiled gradient echo,
   S = PD · sin α · (1 − E1) / (1 − cos α · E1) · exp(−TE / T2),  E1 = exp(−TR / T1),
   which is the spin echo's PD · (1 − E1) · exp(−TE / T2) at α = 90°. Sequences: T1-weighted spin
   echo, T2-weighted spin echo, PD-weighted spin echo and T1-weighted spoiled gradient echo, with TR,
   TE, flip and every tissue's T1/T2/PD drawn from ranges around literature values.
3. **Sub-tissue texture**: a smooth multiplicative random field per tissue (1 + τ·g_t).

Image = Σ_t p_t · S_t · (1 + τ g_t) / max_t S_t, with p_t the deformed partial-volume maps
(CSF, GM, WM): brain intensities near [0, 1], background 0. Pure jax.numpy, jit/vmap-able over
keys, 2-D or 3-D.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import ndimage

from mri_jax.physics import grid

TISSUES = ("csf", "gm", "wm")
# Nominal (T1 ms, T2 ms, PD) between 1.5 T and 3 T; each subject scales them by exp(U(−v, v)).
NOMINAL = np.asarray([[4000.0, 2000.0, 1.00],   # CSF
                      [1350.0, 95.0, 0.82],     # GM
                      [850.0, 75.0, 0.70]],     # WM
                     np.float32)
SEQUENCES = ("t1_se", "t2_se", "pd_se", "t1_gre")
# Per sequence: TR (ms), TE (ms), flip (degrees) ranges.
SEQUENCE_RANGES = np.asarray([
    [[400.0, 700.0], [8.0, 20.0], [90.0, 90.0]],      # T1-weighted spin echo
    [[3000.0, 6000.0], [80.0, 120.0], [90.0, 90.0]],  # T2-weighted spin echo
    [[2500.0, 4000.0], [8.0, 20.0], [90.0, 90.0]],    # PD-weighted spin echo
    [[10.0, 30.0], [3.0, 8.0], [15.0, 40.0]],         # T1-weighted spoiled gradient echo
], np.float32)


class SynthSettings(NamedTuple):
  """Ranges of the subject generator (static: hashable numbers).

  Attributes:
    deform_scale: standard deviation of the velocity control values as a fraction of the control
      point spacing along each axis (scale-free: the same smoothness at any image size).
    deform_points: velocity control points per axis.
    squarings: scaling-and-squaring steps.
    working_size: max points per axis of the grid the deformation is integrated on.
    tissue_variation: v in exp(U(−v, v)) scaling each tissue's T1, T2 and PD.
    texture: maximum texture amplitude τ (drawn per subject from U(0, texture)).
    texture_points: texture lattice points per axis.
    sequences: indices into SEQUENCES drawn uniformly.
  """

  deform_scale: float = 0.1
  deform_points: int = 6
  squarings: int = 6
  working_size: int = 48
  tissue_variation: float = 0.10
  texture: float = 0.06
  texture_points: int = 16
  sequences: tuple[int, ...] = (0, 1, 2, 3)


class Subject(NamedTuple):
  """One synthetic subject.

  Attributes:
    image: clean image, background 0, brain near [0, 1].
    tissues: deformed (3, *shape) partial-volume maps (CSF, GM, WM).
    mask: deformed brain mask (sum of tissue maps > 0.5).
    displacement: (ndim, *shape) displacement in voxels (sample x + u(x) of the template).
    sequence: index into SEQUENCES.
    tissue_signal: (3,) signal per tissue before normalisation.
    tr, te, flip: sequence parameters (ms, ms, degrees).
  """

  image: jax.Array
  tissues: jax.Array
  mask: jax.Array
  displacement: jax.Array
  sequence: jax.Array
  tissue_signal: jax.Array
  tr: jax.Array
  te: jax.Array
  flip: jax.Array


def signal(t1, t2, pd, tr, te, flip_degrees):
  """Spoiled gradient-echo signal (spin echo at 90°) for tissue parameters (broadcasting)."""
  a = jnp.deg2rad(flip_degrees)
  e1 = jnp.exp(-tr / t1)
  return pd * jnp.sin(a) * (1.0 - e1) / (1.0 - jnp.cos(a) * e1) * jnp.exp(-te / t2)


def _resample(vol: jax.Array, coords: jax.Array) -> jax.Array:
  """Linear interpolation of vol at (ndim, ...) index coordinates, edge values outside."""
  return ndimage.map_coordinates(vol, list(coords), order=1, mode="nearest")


def random_displacement(key: jax.Array, shape, settings: SynthSettings = SynthSettings()) -> jax.Array:
  """Displacement field (ndim, *shape) in voxels of a random smooth diffeomorphism.

  The velocity is integrated by scaling and squaring on a grid of at most `working_size` points
  per axis (u ← u + u∘(id + u), `squarings` times) and then upsampled cubically.
  """
  shape = tuple(int(n) for n in shape)
  nd = len(shape)
  work = tuple(min(n, settings.working_size) for n in shape)
  ctrl = tuple(min(n, settings.deform_points) for n in shape)
  spacing = jnp.asarray([n / c for n, c in zip(shape, ctrl)], jnp.float32).reshape((nd,) + (1,) * nd)
  v = jax.random.normal(key, (nd, *ctrl), jnp.float32) * settings.deform_scale * spacing
  v = grid.upsample(v, work)
  scale = jnp.asarray([w / n for w, n in zip(work, shape)], jnp.float32).reshape((nd,) + (1,) * nd)
  u = v * scale / 2.0 ** settings.squarings  # in working-grid voxels
  ident = jnp.stack(jnp.meshgrid(*[jnp.arange(w, dtype=jnp.float32) for w in work], indexing="ij"))
  for _ in range(settings.squarings):
    at = ident + u
    u = u + jnp.stack([_resample(u[d], at) for d in range(nd)])
  return grid.upsample(u / scale, shape)


def warp(volumes: jax.Array, displacement: jax.Array) -> jax.Array:
  """Resamples (C, *shape) volumes at x + displacement(x) (linear interpolation)."""
  shape = volumes.shape[1:]
  ident = jnp.stack(jnp.meshgrid(*[jnp.arange(n, dtype=jnp.float32) for n in shape], indexing="ij"))
  coords = ident + displacement
  return jax.vmap(lambda v: _resample(v, coords))(volumes)


def _smooth_noise(key, n, shape, points):
  lattice = tuple(min(s, points) for s in shape)
  return grid.upsample(jax.random.normal(key, (n, *lattice), jnp.float32), shape)


@functools.partial(jax.jit, static_argnames=("settings",))
def synthesize(key: jax.Array, tissues: jax.Array, settings: SynthSettings = SynthSettings()) -> Subject:
  """One synthetic subject from (3, *shape) CSF/GM/WM partial-volume maps.

  Args:
    key: typed PRNG key; everything about the subject follows from it.
    tissues: (3, X, Y) or (3, X, Y, Z) maps in [0, 1] (e.g. from `anatomy.load_mni152`).
    settings: `SynthSettings` (static).
  """
  tissues = jnp.asarray(tissues, jnp.float32)
  shape = tissues.shape[1:]
  k_def, k_seq, k_tr, k_tis, k_tex, k_tau = jax.random.split(key, 6)
  disp = random_displacement(k_def, shape, settings)
  warped = jnp.clip(warp(tissues, disp), 0.0, 1.0)

  seq = jnp.asarray(settings.sequences, jnp.int32)[
      jax.random.randint(k_seq, (), 0, len(settings.sequences))]
  ranges = jnp.asarray(SEQUENCE_RANGES)[seq]                       # (3, 2)
  tr, te, flip = jax.random.uniform(k_tr, (3,), minval=ranges[:, 0], maxval=ranges[:, 1])
  v = settings.tissue_variation
  params = jnp.asarray(NOMINAL) * jnp.exp(jax.random.uniform(k_tis, (3, 3), minval=-v, maxval=v))
  s = signal(params[:, 0], params[:, 1], params[:, 2], tr, te, flip)  # (3,)
  tau = jax.random.uniform(k_tau, (), maxval=settings.texture)
  texture = 1.0 + tau * _smooth_noise(k_tex, 3, shape, settings.texture_points)
  weights = (s / jnp.max(s)).reshape((3,) + (1,) * len(shape))
  image = jnp.maximum(jnp.sum(warped * weights * texture, axis=0), 0.0)
  return Subject(image=image, tissues=warped, mask=jnp.sum(warped, axis=0) > 0.5, displacement=disp,
                 sequence=seq, tissue_signal=s, tr=tr, te=te, flip=flip)


def jacobian_determinant(displacement: jax.Array) -> jax.Array:
  """det(I + ∇u) by central differences (voxel units): positive everywhere ⇔ locally invertible."""
  nd = displacement.shape[0]
  grads = jnp.stack([jnp.stack(jnp.gradient(displacement[i]), axis=0) for i in range(nd)])  # (i, j, ...)
  jac = grads + jnp.eye(nd).reshape((nd, nd) + (1,) * nd)
  return jnp.linalg.det(jnp.moveaxis(jac, (0, 1), (-2, -1)))
