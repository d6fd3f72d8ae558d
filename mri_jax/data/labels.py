"""Random 2-D label maps for SynthSeg-style training data: brains in heads, and body-like scenes.

A *scene* is a soft label map: `N_LABELS` partial-volume channels (K, C, C) that sum to one per
pixel, channel 0 being air. Intensities are drawn per label later (`mri_jax.data.mixed`), so what
a channel means only matters through its *class* (air, soft tissue, fat, bone, fluid, vessel),
which sets the range its intensity is drawn from. Two scene kinds, both pure jax.numpy and
jit/vmap-able over keys:

- **head**: a CSF/GM/WM slice of the MNI152 template (axial, coronal or sagittal; the template is
  skull-stripped), deformed by a random diffeomorphism (`synth.random_displacement`), wrapped in
  synthetic shells of random, spatially varying thickness: extra-axial CSF, inner table (cortical
  bone), diploe (marrow), outer table, muscle, scalp fat, skin; air outside; plus small lesions.
  Shell boundaries are level sets of an approximate distance to the brain (an octagonal chamfer
  distance from alternating 3×3 cross / square dilations), scaled by a smooth random field.
- **body**: a deformed ellipse (or, sometimes, the whole field of view) with skin and
  subcutaneous fat shells; inside, a SynthMorph partition (argmax of smoothed noise fields),
  nested blobs for organs, bones (cortex ring + marrow), a fluid cyst, thin tubes for vessels
  (a band around the zero level set of a smooth field, width ≈ |g| / |∇g| in pixels) and small
  discs for lesions, painted in that order.

Everything about a scene follows from its key: same key ⇒ identical labels.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mri_jax.data import synth
from mri_jax.physics import grid

N_LABELS = 16
# Label classes: they choose the intensity range a label is drawn from (see `mixed`).
AIR, SOFT, FAT, BONE, FLUID, VESSEL = range(6)
CLASS_NAMES = ("air", "soft", "fat", "bone", "fluid", "vessel")

# Head channels: air, CSF (ventricles, sulci and the extra-axial rim), GM, WM, inner table, diploe,
# outer table, muscle, scalp fat, skin, lesion; the rest unused.
HEAD_CLASSES = np.asarray([AIR, FLUID, SOFT, SOFT, BONE, FAT, BONE, SOFT, FAT, SOFT, SOFT,
                           SOFT, SOFT, SOFT, SOFT, SOFT], np.int32)
# Body channels: air, skin, subcutaneous fat, five partition regions, organ, organ core, bone
# cortex, marrow, vessel, lesion, cyst, second organ.
BODY_CLASSES = np.asarray([AIR, SOFT, FAT, SOFT, SOFT, SOFT, SOFT, SOFT, SOFT, SOFT, BONE, FAT,
                           VESSEL, SOFT, FLUID, SOFT], np.int32)
_PARTITION = (3, 8)  # body channels of the SynthMorph partition
SCENES = ("head", "body")


class LabelSettings(NamedTuple):
  """Static settings of the scene generator (hashable).

  Attributes:
    canvas: side of the square canvas scenes are drawn on (pixels).
    voxel_mm: pixel size of the canvas (mm); shell thicknesses are drawn in mm.
    distance_steps: dilation steps of the chamfer distance (caps shells' total thickness).
    p_head: probability of a head scene (else body).
  """

  canvas: int = 128
  voxel_mm: float = 2.0
  distance_steps: int = 24
  p_head: float = 0.5


class Scene(NamedTuple):
  """One label scene.

  Attributes:
    labels: (N_LABELS, C, C) soft label maps summing to one (channel 0 = air).
    classes: (N_LABELS,) class of each channel (AIR, SOFT, FAT, BONE, FLUID, VESSEL).
    kind: 0 = head, 1 = body (index into SCENES).
    brain: (3, C, C) the head scene's deformed CSF/GM/WM maps (zeros for a body scene), for
      contrasts from the MR signal equation.
  """

  labels: jax.Array
  classes: jax.Array
  kind: jax.Array
  brain: jax.Array


# --------------------------------------------------------------------------------------------
# Host-side: template slices
# --------------------------------------------------------------------------------------------
def _centre_fit(a: np.ndarray, size: int) -> np.ndarray:
  """Centre-crops / zero-pads the last two axes of `a` to size × size."""
  out = np.zeros(a.shape[:-2] + (size, size), a.dtype)
  src, dst = [], []
  for n in a.shape[-2:]:
    if n >= size:
      src.append(slice((n - size) // 2, (n - size) // 2 + size))
      dst.append(slice(0, size))
    else:
      src.append(slice(0, n))
      dst.append(slice((size - n) // 2, (size - n) // 2 + n))
  out[(...,) + tuple(dst)] = a[(...,) + tuple(src)]
  return out


def template_slices(tissues: np.ndarray, canvas: int, per_axis: int = 24) -> np.ndarray:
  """(N, 3, canvas, canvas) CSF/GM/WM slices of (3, X, Y, Z) maps along all three axes.

  Up to `per_axis` slices per axis, evenly spread over the slices whose brain area is at least
  30% of that axis's largest (no caps of the head), each centred on the canvas.
  """
  out = []
  for ax in range(3):
    maps = np.moveaxis(tissues, ax + 1, 1)  # (3, n, a, b)
    area = (maps.sum(0) > 0.5).reshape(maps.shape[1], -1).sum(1)
    good = np.flatnonzero(area >= 0.3 * area.max())
    pick = good[np.unique(np.linspace(0, len(good) - 1, per_axis).round().astype(int))]
    out += [_centre_fit(maps[:, i], canvas) for i in pick]
  return np.stack(out).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Building blocks (pure jnp)
# --------------------------------------------------------------------------------------------
def smooth_noise(key: jax.Array, n: int, shape, points: int) -> jax.Array:
  """(n, *shape) smooth Gaussian fields: N(0, 1) on a lattice of `points` per axis, cubic upsampling."""
  lattice = tuple(min(int(s), points) for s in shape)
  return grid.upsample(jax.random.normal(key, (n, *lattice), jnp.float32), tuple(shape))


def _dilate(m: jax.Array, square: bool) -> jax.Array:
  """One 3×3 grey dilation (cross, or square), zero outside."""
  p = jnp.pad(m, 1)
  out = jnp.maximum(jnp.maximum(p[1:-1, 1:-1], jnp.maximum(p[:-2, 1:-1], p[2:, 1:-1])),
                    jnp.maximum(p[1:-1, :-2], p[1:-1, 2:]))
  if square:
    out = jnp.maximum(out, jnp.maximum(jnp.maximum(p[:-2, :-2], p[2:, 2:]),
                                       jnp.maximum(p[:-2, 2:], p[2:, :-2])))
  return out


def outside_distance(mask: jax.Array, steps: int) -> jax.Array:
  """Approximate Euclidean distance (pixels) from a soft 2-D mask, capped at `steps`.

  Octagonal chamfer distance: the number of dilations (alternately by a cross and a square) a
  pixel waits for before the mask reaches it; 0 inside, fractional on soft edges.
  """
  def step(i, carry):
    cur, dist = carry
    cur = jax.lax.cond(i % 2 == 0, lambda m: _dilate(m, False), lambda m: _dilate(m, True), cur)
    return cur, dist + (1.0 - cur)

  _, dist = jax.lax.fori_loop(0, steps, step, (mask, 1.0 - mask))
  return dist


def inside(boundary: jax.Array, distance: jax.Array) -> jax.Array:
  """Soft indicator (1-pixel ramp) of distance < boundary."""
  return jnp.clip(boundary - distance + 0.5, 0.0, 1.0)


def paint(labels: jax.Array, channel: int, weight: jax.Array) -> jax.Array:
  """Paints `weight` (soft, in [0, 1]) of `channel` over (K, ...) soft labels (sum kept at one)."""
  onehot = jax.nn.one_hot(channel, labels.shape[0], dtype=labels.dtype).reshape(
      (-1,) + (1,) * (labels.ndim - 1))
  return labels * (1.0 - weight) + onehot * weight


def _coords(c: int) -> jax.Array:
  """(2, C, C) pixel coordinates centred on the canvas, in units of the half side."""
  ax = (jnp.arange(c, dtype=jnp.float32) + 0.5) / c * 2.0 - 1.0
  return jnp.stack(jnp.meshgrid(ax, ax, indexing="ij"))


def ellipse(key: jax.Array, xy: jax.Array, centre, radii, wobble: float = 0.15) -> jax.Array:
  """Level function of a randomly rotated, noise-perturbed ellipse: > 0 inside, ≈ 1 at the centre."""
  k_rot, k_noise = jax.random.split(key)
  t = jax.random.uniform(k_rot, (), minval=0.0, maxval=jnp.pi)
  d = xy - jnp.asarray(centre).reshape(2, 1, 1)
  u = jnp.cos(t) * d[0] + jnp.sin(t) * d[1]
  v = -jnp.sin(t) * d[0] + jnp.cos(t) * d[1]
  r2 = (u / radii[0]) ** 2 + (v / radii[1]) ** 2
  return 1.0 - r2 + wobble * smooth_noise(k_noise, 1, xy.shape[1:], 5)[0]


def _soft(level: jax.Array, radius: jax.Array, c: int) -> jax.Array:
  """Soft inside-indicator of a level function whose unit is ~radius (canvas half sides)."""
  return jnp.clip(0.5 + level * radius * c / 4.0, 0.0, 1.0)


def _random_point(key: jax.Array, weight: jax.Array, xy: jax.Array) -> jax.Array:
  """A random canvas point (centred coordinates) where `weight` > 0 (the argmax of weight · noise)."""
  score = jnp.where(weight > 0.5, jax.random.uniform(key, weight.shape), -1.0)
  i = jnp.argmax(score.ravel())
  return xy.reshape(2, -1)[:, i]


def discs(key: jax.Array, xy: jax.Array, region: jax.Array, n: int, radius_px, p: float) -> jax.Array:
  """Soft union of up to n small discs (radius in pixels) centred in `region`, each present w.p. p."""
  c = xy.shape[-1]
  k = jax.random.split(key, 3 * n)
  out = jnp.zeros(xy.shape[1:], jnp.float32)
  for i in range(n):
    centre = _random_point(k[3 * i], region, xy)
    r = jax.random.uniform(k[3 * i + 1], (), minval=radius_px[0], maxval=radius_px[1])
    dist = jnp.sqrt(jnp.sum((xy - centre.reshape(2, 1, 1)) ** 2, 0)) * c / 2.0
    on = jax.random.bernoulli(k[3 * i + 2], p)
    out = jnp.maximum(out, jnp.where(on, inside(r, dist), 0.0))
  return out * region


def tubes(key: jax.Array, shape, width_px, points: int = 6) -> jax.Array:
  """Thin curvy tubes: pixels within ~width/2 of the zero level set of a smooth field."""
  g = smooth_noise(key, 1, shape, points)[0]
  gx, gy = jnp.gradient(g)
  dist = jnp.abs(g) / jnp.maximum(jnp.sqrt(gx * gx + gy * gy), 1e-6)
  return inside(width_px / 2.0, dist)


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------
def _mm(key, low, high, settings: LabelSettings):
  """A thickness drawn in mm, returned in canvas pixels."""
  return jax.random.uniform(key, (), minval=low, maxval=high) / settings.voxel_mm


def head_scene(key: jax.Array, slices: jax.Array, settings: LabelSettings = LabelSettings()):
  """Head labels: a deformed template slice wrapped in skull and scalp shells; returns (labels, brain)."""
  c = settings.canvas
  k = jax.random.split(key, 16)
  tissue = slices[jax.random.randint(k[0], (), 0, slices.shape[0])]  # (3, C, C)
  disp = synth.random_displacement(k[1], (c, c), synth.SynthSettings(deform_scale=0.08, deform_points=5))
  tissue = jnp.clip(synth.warp(tissue, disp), 0.0, 1.0)
  brain = jnp.clip(jnp.sum(tissue, 0), 0.0, 1.0)
  dist = outside_distance(brain, settings.distance_steps)
  var = smooth_noise(k[2], 2, (c, c), 4)
  dist = dist * jnp.exp(0.25 * var[0])
  # Shell boundaries (cumulative, pixels); muscle thickness varies around the head (temporalis).
  skull = jax.random.bernoulli(k[3], 0.9)  # else a skull-stripped look: brain in air
  widths = [_mm(k[4], 0.5, 3.0, settings), _mm(k[5], 0.7, 2.5, settings), _mm(k[6], 0.5, 5.0, settings),
            _mm(k[7], 0.7, 2.5, settings),
            _mm(k[8], 0.0, 8.0, settings) * jnp.clip(var[1] + 0.3, 0.0, 1.5),
            _mm(k[9], 1.0, 8.0, settings), _mm(k[10], 0.7, 3.0, settings)]
  channels = [1, 4, 5, 6, 7, 8, 9]  # CSF rim, inner table, diploe, outer table, muscle, fat, skin
  labels = jnp.zeros((N_LABELS, c, c), jnp.float32).at[0].set(1.0)
  bound = jnp.zeros((c, c), jnp.float32)
  shells = []
  for ch, w in zip(channels, widths):
    bound = bound + w * skull
    shells.append((ch, inside(bound, dist)))
  for ch, m in reversed(shells):  # outermost first, then paint inwards
    labels = paint(labels, ch, m)
  tissue = tissue * (brain / jnp.maximum(jnp.sum(tissue, 0), 1e-6))  # partial volumes sum ≤ 1
  labels = labels * (1.0 - brain) + jnp.concatenate(
      [jnp.zeros((1, c, c)), tissue, jnp.zeros((N_LABELS - 4, c, c))])
  xy = _coords(c)
  wm = tissue[2] > 0.5
  lesions = discs(k[11], xy, wm.astype(jnp.float32), 3, (1.0, 5.0), 0.4)
  return paint(labels, 10, lesions), tissue


def body_scene(key: jax.Array, settings: LabelSettings = LabelSettings()) -> jax.Array:
  """Body-like labels: outline, skin/fat shells, partition, organs, bones, cyst, vessels, lesions."""
  c = settings.canvas
  k = jax.random.split(key, 24)
  xy = _coords(c)
  # Outline: a deformed ellipse; sometimes it fills the whole canvas (no air at all).
  radii = jax.random.uniform(k[0], (2,), minval=0.45, maxval=0.9)
  centre = jax.random.uniform(k[1], (2,), minval=-0.1, maxval=0.1)
  outline = _soft(ellipse(k[2], xy, centre, radii, 0.2), jnp.min(radii), c)
  outline = jnp.where(jax.random.bernoulli(k[3], 0.2), 1.0, outline)
  depth = outside_distance(1.0 - outline, settings.distance_steps)  # inward distance from the edge
  var = smooth_noise(k[4], 1, (c, c), 4)[0]
  labels = jnp.zeros((N_LABELS, c, c), jnp.float32).at[0].set(1.0)
  labels = paint(labels, 1, outline)
  # Skin, then subcutaneous fat, absent on 30% of bodies (muscle or organ right next to air).
  skin = _mm(k[5], 0.7, 4.0, settings)
  fat = _mm(k[6], 0.0, 25.0, settings) * jnp.exp(0.4 * var) * jax.random.bernoulli(k[20], 0.7)
  fat_edge = skin + fat
  labels = paint(labels, 2, outline * (1.0 - inside(skin, depth)))
  interior = outline * (1.0 - inside(fat_edge, depth))
  # SynthMorph partition of the interior (smoothed noise → argmax), at a random scale.
  n_part = _PARTITION[1] - _PARTITION[0]
  coarse, fine = smooth_noise(k[7], n_part, (c, c), 4), smooth_noise(k[8], n_part, (c, c), 9)
  mix = jax.random.uniform(k[9], ())
  part = jax.nn.one_hot(jnp.argmax(coarse * (1 - mix) + fine * mix, 0), n_part, axis=0)
  labels = labels * (1.0 - interior) + interior * jnp.concatenate(
      [jnp.zeros((_PARTITION[0], c, c)), part, jnp.zeros((N_LABELS - _PARTITION[1], c, c))])
  # Organs: nested blobs (organ with a core), a second organ, a cyst.
  for i, (outer, inner, size) in enumerate(((8, 9, (0.15, 0.45)), (15, 15, (0.1, 0.3)),
                                            (14, 14, (0.03, 0.12)))):
    kk = jax.random.split(k[10 + i], 5)
    r = jax.random.uniform(kk[0], (2,), minval=size[0], maxval=size[1])
    ctr = _random_point(kk[1], interior, xy)
    present = jax.random.bernoulli(kk[2], 0.7)
    lvl = ellipse(kk[3], xy, ctr, r, 0.1)
    labels = paint(labels, outer, _soft(lvl, jnp.min(r), c) * interior * present)
    core = jax.random.uniform(kk[4], (), minval=0.3, maxval=0.8)
    labels = paint(labels, inner, _soft(lvl - (1 - core ** 2), jnp.min(r) * core, c) * interior * present)
  # Bones: up to two ellipses with a dark cortex ring of 1–4 px and marrow inside.
  for i in range(2):
    kk = jax.random.split(k[13 + i], 5)
    r = jax.random.uniform(kk[0], (2,), minval=0.06, maxval=0.3)
    ctr = _random_point(kk[1], interior, xy)
    present = jax.random.bernoulli(kk[2], 0.5)
    lvl = ellipse(kk[3], xy, ctr, r, 0.05)
    bone = _soft(lvl, jnp.min(r), c) * interior * present
    ring = jax.random.uniform(kk[4], (), minval=1.0, maxval=4.0) / (jnp.min(r) * c / 2.0)
    labels = paint(labels, 10, bone)
    labels = paint(labels, 11, _soft(lvl - 2 * ring, jnp.min(r), c) * bone)
  # Vessels (a random share of the tube network) and lesions.
  width = jax.random.uniform(k[15], (), minval=1.0, maxval=3.5)
  keep = (smooth_noise(k[16], 1, (c, c), 3)[0] > jax.random.uniform(k[17], (), minval=-0.5, maxval=1.5))
  labels = paint(labels, 12, tubes(k[18], (c, c), width) * keep * interior)
  return paint(labels, 13, discs(k[19], xy, interior, 4, (1.0, 6.0), 0.35))


def scene(key: jax.Array, slices: jax.Array, settings: LabelSettings = LabelSettings()) -> Scene:
  """One random scene (head with probability `p_head`, else body); see the module docstring.

  Args:
    key: typed PRNG key; same key ⇒ identical scene.
    slices: (N, 3, C, C) template CSF/GM/WM slices from `template_slices` (C = settings.canvas).
    settings: `LabelSettings` (static).
  """
  k_kind, k_head, k_body = jax.random.split(key, 3)
  is_head = jax.random.bernoulli(k_kind, settings.p_head)
  head, brain = head_scene(k_head, slices, settings)
  body = body_scene(k_body, settings)
  return Scene(labels=jnp.where(is_head, head, body),
               classes=jnp.where(is_head, jnp.asarray(HEAD_CLASSES), jnp.asarray(BODY_CLASSES)),
               kind=jnp.where(is_head, 0, 1).astype(jnp.int32),
               brain=jnp.where(is_head, brain, 0.0))
