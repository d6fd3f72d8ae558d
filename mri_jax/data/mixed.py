"""Clean training images of random contrast, geometry and size from random label scenes.

The SynthSeg recipe on the scenes of `mri_jax.data.labels`: every label's intensity is drawn at
random, then the image is resampled and degraded. One key ⇒ one `Example`, pure jax.numpy,
jit/vmap-able over keys (`examples`):

1. **Contrast.** A weighting per image: T1-like (fluid dark, fat bright), T2-like (fluid and fat
   bright), PD / fat-saturated (fat dark), or fully random (every label U(0, 1), as SynthSeg).
   Each label's intensity is drawn from its class's range under that weighting (soft tissues
   cluster around one level with a random spread, except under the random weighting); cortical
   bone and air stay near zero, and 12% of soft-tissue labels sit just above the noise floor
   (tendon, lung). Head scenes under T1/T2/PD take their CSF/GM/WM intensities from the MR signal equation
   (`synth.signal`, random sequence parameters and tissue T1/T2/PD) instead.
2. **Texture.** Each label's intensity is modulated by a coarse and a fine smooth random field
   (amplitudes random per label).
3. **Geometry.** A random similarity + anisotropic scaling maps the output grid onto the canvas:
   zoom 0.7–2× (log-uniform) with a small shift, or, for `p_tight` of the images, a tight crop
   (zoom 2.5–4× around a random point deep inside the tissue: anatomy touches every edge, often
   no air at all); a canvas whose border is tissue is mirrored beyond its edges, so body scenes
   that fill it never show a straight canvas edge;
   rotation (right angles ± 10°, or any angle), flips; pixel aspect ratio up to ±20%.
4. **Resolution.** Partial-volume blur (Gaussian σ ≤ 0.7 px) and, for `p_lowres` of the images, a
   low acquisition resolution: Gaussian blur (σ = 0.42 f) and linear re-interpolation from a grid
   f ∈ [1, `max_lowres`] times coarser, per axis (often one axis only: thick slices).
5. **Field of view.** For `1 − p_full_fov` of the images the content is an embedded image of
   random (odd or even, non-square) size `min_side`…size per side, zero-padded (centred or not)
   into the fixed-size record, as scanners and converters pad. `zero_background` marks images
   whose background should be masked to zero after corruption (scanner-side masking).

The clean image is scaled to a maximum of 1; `mask` is the foreground (non-air) inside the field
of view (the whole field of view when it holds almost no tissue).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import ndimage

from mri_jax.data import labels as labels_lib
from mri_jax.data import synth

WEIGHTINGS = ("t1", "t2", "pd", "random")
# (low, high) intensity per weighting × class (air, soft, fat, bone, fluid, vessel).
_INTENSITY = np.asarray([
    [[0, 0], [0.15, 0.7], [0.75, 1.0], [0.0, 0.06], [0.02, 0.25], [0.0, 1.0]],  # T1-like
    [[0, 0], [0.1, 0.6], [0.55, 0.95], [0.0, 0.06], [0.7, 1.0], [0.0, 1.0]],    # T2-like
    [[0, 0], [0.2, 0.8], [0.02, 0.2], [0.0, 0.06], [0.3, 1.0], [0.0, 1.0]],     # PD / fat-sat
    [[0, 0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.3], [0.0, 1.0], [0.0, 1.0]],       # random
], np.float32)
# Sequences (indices into synth.SEQUENCES) of the brain's physical contrast per weighting.
_SEQUENCE_OF = np.asarray([[0, 3], [1, 1], [2, 2], [0, 0]], np.int32)


class MixSettings(NamedTuple):
  """Static settings of the image generator (hashable).

  Attributes:
    size: side of the output records (pixels).
    labels: `labels.LabelSettings` of the scenes.
    zoom: (min, max) zoom of the normal framing (log-uniform).
    p_tight: share of tight crops (zoom `tight_zoom` around a tissue point).
    tight_zoom: (min, max) zoom of tight crops.
    p_full_fov: share of images filling the whole record (else an embedded smaller image).
    min_side: smallest side of an embedded image.
    p_lowres: share of images acquired at a lower resolution.
    max_lowres: largest resolution-loss factor per axis.
    p_zero_background: share of images whose background is masked to zero after corruption.
    p_detail: share of images given pixel-scale detail after framing (`pixel_detail`: fine
      texture and thin curvilinear lines, as sulci, vessels and septa show on real scans); 0 in
      the `mixed128` build, whose records stay as they were.
    detail_lattice: lattice points per axis of the field whose level sets draw the thin lines
      (their spacing sets how tightly they curve).
  """

  size: int = 128
  labels: labels_lib.LabelSettings = labels_lib.LabelSettings()
  zoom: tuple[float, float] = (0.7, 2.0)
  p_tight: float = 0.25
  tight_zoom: tuple[float, float] = (2.5, 4.0)
  p_full_fov: float = 0.5
  min_side: int = 48
  p_lowres: float = 0.5
  max_lowres: float = 3.0
  p_zero_background: float = 0.15
  p_detail: float = 0.0
  detail_lattice: int = 16


class Example(NamedTuple):
  """One clean image and what the corruption step needs to know about it.

  Attributes:
    clean: (S, S) clean image, maximum 1, zero outside the field of view.
    mask: (S, S) bool foreground inside the field of view.
    window: (S, S) float32 field of view (1 inside the embedded image, 0 in the padding).
    support: (S, S) float32 foreground dilated by 2 px (where signal is kept when the background
      is masked).
    zero_background: bool, mask the corrupted background to zero (see `finish`).
    kind: scene kind (index into `labels.SCENES`).
    weighting: index into WEIGHTINGS.
  """

  clean: jax.Array
  mask: jax.Array
  window: jax.Array
  support: jax.Array
  zero_background: jax.Array
  kind: jax.Array
  weighting: jax.Array


# --------------------------------------------------------------------------------------------
# Contrast
# --------------------------------------------------------------------------------------------
def label_intensities(key: jax.Array, scene: labels_lib.Scene, weighting: jax.Array) -> jax.Array:
  """(N_LABELS,) intensities of a scene's labels under a weighting (see the module docstring)."""
  k_draw, k_floor, k_seq, k_par, k_tis, k_scale = jax.random.split(key, 6)
  ranges = jnp.asarray(_INTENSITY)[weighting][scene.classes]          # (K, 2)
  values = jax.random.uniform(k_draw, (labels_lib.N_LABELS,), minval=ranges[:, 0], maxval=ranges[:, 1])
  # Outside the random weighting, soft tissues cluster around one level (muscles and organs
  # differ by little), with a random spread.
  k_level, k_spread, k_dev = jax.random.split(jax.random.fold_in(k_draw, 1), 3)
  lo, hi = ranges[:, 0], ranges[:, 1]
  soft_lo, soft_hi = jnp.asarray(_INTENSITY)[weighting, labels_lib.SOFT]
  level = jax.random.uniform(k_level, (), minval=soft_lo, maxval=soft_hi)
  spread = jax.random.uniform(k_spread, (), minval=0.03, maxval=0.3) * (soft_hi - soft_lo)
  clustered = jnp.clip(level + spread * jax.random.uniform(k_dev, values.shape, minval=-1.0, maxval=1.0), lo, hi)
  soft = (scene.classes == labels_lib.SOFT) & (weighting != WEIGHTINGS.index("random"))
  values = jnp.where(soft, clustered, values)
  floor = jax.random.bernoulli(k_floor, 0.12, values.shape) & (scene.classes == labels_lib.SOFT)
  values = jnp.where(floor, jax.random.uniform(k_floor, values.shape, minval=0.01, maxval=0.08), values)
  # Head scenes: CSF/GM/WM from the signal equation of a random sequence of this weighting.
  seq = jnp.asarray(_SEQUENCE_OF)[weighting][jax.random.randint(k_seq, (), 0, 2)]
  rng = jnp.asarray(synth.SEQUENCE_RANGES)[seq]
  tr, te, flip = jax.random.uniform(k_par, (3,), minval=rng[:, 0], maxval=rng[:, 1])
  par = jnp.asarray(synth.NOMINAL) * jnp.exp(jax.random.uniform(k_tis, (3, 3), minval=-0.1, maxval=0.1))
  s = synth.signal(par[:, 0], par[:, 1], par[:, 2], tr, te, flip)
  brain = s / jnp.max(s) * jax.random.uniform(k_scale, (), minval=0.5, maxval=1.0)
  physical = (scene.kind == 0) & (weighting != WEIGHTINGS.index("random"))
  return values.at[1:4].set(jnp.where(physical, brain, values[1:4]))


def render(key: jax.Array, scene: labels_lib.Scene, weighting: jax.Array) -> jax.Array:
  """(C, C) image of a scene: per-label intensity × (1 + coarse + fine texture), partial volumes summed."""
  k_int, k_coarse, k_fine, k_amp = jax.random.split(key, 4)
  n, c = labels_lib.N_LABELS, scene.labels.shape[-1]
  values = label_intensities(k_int, scene, weighting)
  amp = jax.random.uniform(k_amp, (2, n, 1, 1)) * jnp.asarray([0.25, 0.2]).reshape(2, 1, 1, 1)
  texture = (1.0 + amp[0] * labels_lib.smooth_noise(k_coarse, n, (c, c), 6)
             + amp[1] * labels_lib.smooth_noise(k_fine, n, (c, c), max(c // 3, 8)))
  return jnp.sum(scene.labels * values.reshape(n, 1, 1) * jnp.maximum(texture, 0.0), 0)


# --------------------------------------------------------------------------------------------
# Geometry and resolution
# --------------------------------------------------------------------------------------------
def gaussian_blur(image: jax.Array, sigmas, radius: int = 6) -> jax.Array:
  """Separable Gaussian blur of a 2-D image with per-axis σ (pixels, may be traced), edge padding."""
  t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  for axis, s in enumerate(sigmas):
    w = jnp.exp(-t ** 2 / (2.0 * jnp.maximum(s, 1e-3) ** 2))
    w = w / jnp.sum(w)
    pads = [(0, 0), (0, 0)]
    pads[axis] = (radius, radius)
    p = jnp.pad(image, pads, mode="edge")
    n = image.shape[axis]
    image = sum(w[i] * jax.lax.slice_in_dim(p, i, i + n, axis=axis) for i in range(2 * radius + 1))
  return image


def _interp_axis(image: jax.Array, pos: jax.Array, axis: int) -> jax.Array:
  """Linear interpolation of `image` at fractional positions `pos` along `axis` (clamped)."""
  n = image.shape[axis]
  pos = jnp.clip(pos, 0.0, n - 1.0)
  i0 = jnp.floor(pos).astype(jnp.int32)
  i1 = jnp.minimum(i0 + 1, n - 1)
  t = (pos - i0).reshape([-1 if a == axis else 1 for a in range(image.ndim)])
  return jnp.take(image, i0, axis=axis) * (1 - t) + jnp.take(image, i1, axis=axis) * t


def low_resolution(key: jax.Array, image: jax.Array, factors: jax.Array) -> jax.Array:
  """Re-interpolates a (blurred) image from a grid `factors` (per axis, ≥ 1) times coarser."""
  for axis, f in enumerate(factors):
    n = image.shape[axis]
    phase = jax.random.uniform(jax.random.fold_in(key, axis), (), maxval=f)
    c = (jnp.arange(n, dtype=jnp.float32) + phase) / f
    i0 = jnp.floor(c)
    t = (c - i0).reshape([-1 if a == axis else 1 for a in range(image.ndim)])
    lo = _interp_axis(image, i0 * f - phase, axis)
    hi = _interp_axis(image, (i0 + 1) * f - phase, axis)
    image = lo * (1 - t) + hi * t
  return image


def _framing(key: jax.Array, foreground: jax.Array, settings: MixSettings) -> jax.Array:
  """(2, S, S) canvas pixel coordinates of the output grid (zoom, crop, rotation, flips, aspect)."""
  k = jax.random.split(key, 9)
  s, c = settings.size, settings.labels.canvas
  tight = jax.random.bernoulli(k[0], settings.p_tight)
  lz = jnp.log(jnp.asarray(settings.zoom, jnp.float32))
  lt = jnp.log(jnp.asarray(settings.tight_zoom, jnp.float32))
  zoom = jnp.exp(jnp.where(tight, jax.random.uniform(k[1], (), minval=lt[0], maxval=lt[1]),
                           jax.random.uniform(k[1], (), minval=lz[0], maxval=lz[1])))
  xy = labels_lib._coords(c)
  deep = foreground
  for _ in range(max(c // 16, 1)):  # erode: tight crops centre well inside the tissue
    deep = 1.0 - labels_lib._dilate(1.0 - deep, True)
  deep = jnp.where(jnp.max(deep) > 0.5, deep, foreground)
  centre = jnp.where(tight, labels_lib._random_point(k[2], deep, xy),
                     jax.random.uniform(k[2], (2,), minval=-0.2, maxval=0.2))
  right = jax.random.randint(k[3], (), 0, 4) * (jnp.pi / 2) + jax.random.uniform(
      k[4], (), minval=-0.17, maxval=0.17)
  theta = jnp.where(jax.random.bernoulli(k[5], 0.5), right,
                    jax.random.uniform(k[4], (), minval=-jnp.pi, maxval=jnp.pi))
  aspect = jnp.exp(jax.random.uniform(k[6], (), minval=-0.2, maxval=0.2))
  flips = jnp.where(jax.random.bernoulli(k[7], 0.5, (2,)), -1.0, 1.0)
  scale = flips * jnp.stack([aspect, 1.0 / aspect]) / zoom
  y = labels_lib._coords(s) * scale.reshape(2, 1, 1)
  rot = jnp.asarray([[jnp.cos(theta), -jnp.sin(theta)], [jnp.sin(theta), jnp.cos(theta)]])
  x = jnp.einsum("ij,jab->iab", rot, y) + centre.reshape(2, 1, 1)
  return (x + 1.0) / 2.0 * c - 0.5


def pixel_detail(key: jax.Array, image: jax.Array, foreground: jax.Array, lattice: int = 16) -> jax.Array:
  """`image` (S, S) with detail at the scale of its own pixels, inside `foreground` only.

  Framing magnifies the canvas (zoom up to 2×, tight crops more), so framed images alone are
  smoother per pixel than real scans of the same size; this adds what they lack:
  - fine texture: × (1 + a·n) with n a smooth field on a lattice of S/2 points (≈ 2 px grain),
    a ~ U(0, 0.12);
  - thin lines: the zero level set of a smooth field on `lattice` points per axis, drawn with a
    width of about 1–2 px (exp(−(f/w)²), w random), dark (sulci, septa, flow voids) or bright
    (vessels, fat planes) by a random contrast up to ±60% of the local intensity.
  """
  s = image.shape[-1]
  k_tex, k_amp, k_line, k_w, k_c, k_sign, k_on = jax.random.split(key, 7)
  amp = jax.random.uniform(k_amp, (), maxval=0.12)
  texture = labels_lib.smooth_noise(k_tex, 1, (s, s), max(s // 2, 8))[0]
  f = labels_lib.smooth_noise(k_line, 1, (s, s), lattice)[0]
  width = jax.random.uniform(k_w, (), minval=0.04, maxval=0.12)
  lines = jnp.exp(-(f / width) ** 2) * jax.random.bernoulli(k_on, 0.8)
  contrast = jax.random.uniform(k_c, (), minval=0.2, maxval=0.6) * jnp.where(
      jax.random.bernoulli(k_sign, 0.6), -1.0, 1.0)
  fg = jnp.clip(foreground, 0.0, 1.0)
  detailed = image * jnp.maximum(1.0 + amp * texture, 0.0) * (1.0 + contrast * lines)
  return jnp.maximum(image + fg * (detailed - image), 0.0)


def _window(key: jax.Array, settings: MixSettings) -> jax.Array:
  """(S, S) field of view of an embedded image (random sides, centred or not) or all ones."""
  k = jax.random.split(key, 4)
  s = settings.size
  lo = min(settings.min_side, s)
  sides = jax.random.randint(k[0], (2,), lo, s + 1)
  centred = jax.random.bernoulli(k[1], 0.7)
  start = jnp.where(centred, (s - sides) // 2,
                    jax.random.randint(k[2], (2,), 0, s + 1) % (s - sides + 1))
  full = jax.random.bernoulli(k[3], settings.p_full_fov)
  idx = jnp.arange(s)
  rows = (idx >= start[0]) & (idx < start[0] + sides[0])
  cols = (idx >= start[1]) & (idx < start[1] + sides[1])
  return jnp.where(full, 1.0, (rows[:, None] & cols[None, :]).astype(jnp.float32))


# --------------------------------------------------------------------------------------------
# One example
# --------------------------------------------------------------------------------------------
def example(key: jax.Array, slices: jax.Array, settings: MixSettings = MixSettings()) -> Example:
  """One clean example from a key (see the module docstring); same key ⇒ identical example.

  Args:
    key: typed PRNG key.
    slices: (N, 3, C, C) template slices (`labels.template_slices`, C = settings.labels.canvas).
    settings: `MixSettings` (static).
  """
  k_scene, k_w, k_render, k_frame, k_pv, k_low, k_lowp, k_win, k_bg = jax.random.split(key, 9)
  sc = labels_lib.scene(k_scene, slices, settings.labels)
  weighting = jax.random.randint(k_w, (), 0, len(WEIGHTINGS))
  image = render(k_render, sc, weighting)
  coords = _framing(k_frame, 1.0 - sc.labels[0], settings)
  # Mirror the canvas beyond its edges only where tissue fills its border (a body filling the
  # canvas: no straight canvas edges); elsewhere the outside is air (no mirrored copies of a head).
  fg = 1.0 - sc.labels[0]
  filled = jnp.mean(jnp.concatenate([fg[0], fg[-1], fg[:, 0], fg[:, -1]])) > 0.9
  warp = lambda a: jnp.where(
      filled, ndimage.map_coordinates(a, list(coords), order=1, mode="mirror"),
      ndimage.map_coordinates(a, list(coords), order=1, mode="constant", cval=0.0))
  image, foreground = warp(image), warp(fg)
  if settings.p_detail > 0:  # (static: builds without detail draw no extra keys and stay as they were)
    k_det, k_on = jax.random.split(jax.random.fold_in(key, 1))
    image = jnp.where(jax.random.bernoulli(k_on, settings.p_detail),
                      pixel_detail(k_det, image, foreground, settings.detail_lattice), image)
  # Resolution: partial volume always, a coarser acquisition grid sometimes (often one axis).
  pv = jax.random.uniform(k_pv, (), maxval=0.7)
  kk = jax.random.split(k_lowp, 3)
  factors = jax.random.uniform(kk[0], (2,), minval=1.0, maxval=settings.max_lowres)
  factors = jnp.where(jax.random.bernoulli(kk[1], 0.5), factors.at[jax.random.randint(kk[2], (), 0, 2)].set(1.0),
                      factors)
  factors = jnp.where(jax.random.bernoulli(k_low, settings.p_lowres), factors, 1.0)
  image = gaussian_blur(image, jnp.where(factors > 1.0, jnp.maximum(pv, 0.42 * factors), pv))
  image = jnp.maximum(low_resolution(k_low, image, factors), 0.0)
  # Field of view, scaling, masks.
  window = _window(k_win, settings)
  image = image * window
  image = image / jnp.maximum(jnp.max(image), 1e-6)
  mask = (foreground > 0.5) & (window > 0)
  mask = jnp.where(jnp.sum(mask) < 16, window > 0, mask)
  support = labels_lib._dilate(labels_lib._dilate(mask.astype(jnp.float32), True), True)
  return Example(clean=image, mask=mask, window=window, support=support,
                 zero_background=jax.random.bernoulli(k_bg, settings.p_zero_background),
                 kind=sc.kind, weighting=weighting)


@functools.partial(jax.jit, static_argnames=("settings",))
def examples(keys: jax.Array, slices: jax.Array, settings: MixSettings = MixSettings()) -> Example:
  """`example` vmapped over a (B,) array of keys."""
  return jax.vmap(lambda k: example(k, slices, settings))(keys)


def finish(corrupted: jax.Array, ex: Example) -> jax.Array:
  """Applies the field of view (zero padding) and, where flagged, a zero background to corrupted images."""
  keep = ex.window * jnp.where(jnp.reshape(ex.zero_background, (-1,) + (1,) * (ex.window.ndim - 1)),
                               ex.support, 1.0)
  return corrupted * keep
