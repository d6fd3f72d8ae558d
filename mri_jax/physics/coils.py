"""Receive-coil sensitivity maps: loop coils on a cylinder around the field of view.

Two models share one geometry (loops on a cylinder of radius `coil_distance` around the bore axis
z, in `n_rings` rings, each loop's plane tangent to the cylinder):

* `biot_savart`: the magnetic field of a unit current in each circular loop, integrated with the
  Biot–Savart law over `LOOP_SEGMENTS` straight segments. By reciprocity the receive sensitivity is
  the transverse field, s = B_x − i·B_y (Hoult's convention up to a global conjugation).
* `falloff`: the cheap closed form |s| ∝ (d + d0)^-p with d the distance to the loop centre and a
  smooth phase (the in-plane angle seen from the coil, as in SigPy's birdcage maps).

Fields are smooth inside the coil array, so they are evaluated on a coarse grid (at most
`params.coarse_size` points per axis) and upsampled with a cubic kernel; the error of that
approximation is measured in tests/physics/test_coils.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mri_jax.physics import grid
from mri_jax.physics.params import SimulationParams

# The loop integrand is smooth and periodic, so the segment (trapezoid) rule converges
# exponentially: 16 segments are within 1e-5 of 192 inside the head (tests/physics/test_fields.py).
LOOP_SEGMENTS = 16
# Wire half-thickness in normalised units: regularises the 1/r^3 kernel for voxels next to a wire
# (only the corners of the field of view, outside the coil array, get that close).
WIRE_RADIUS = 0.05
# Radius (normalised) of the central cylinder over which the receive field is scaled to mean 1.
NORMALISATION_RADIUS = 0.7
# Above this many (coil, segment, point) triples the coils are evaluated one at a time.
_BROADCAST_LIMIT = 2**23


def loop_geometry(params: SimulationParams) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Centres, radial normals, tangents and the loop radius of every coil.

  Returns:
    centres (C, 3), normals (C, 3) (pointing away from the axis), tangents (C, 3) (azimuthal
    direction in the loop plane) and the loop radius (scalar).
  """
  n, rings = params.n_coils, params.n_rings
  per_ring = n // rings
  idx = jnp.arange(n)
  ring, k = idx // per_ring, idx % per_ring
  radius_r = params.coil_distance
  touching = jnp.minimum(jnp.pi * radius_r / per_ring, 0.5 * radius_r)
  a = params.coil_size * touching
  # Rings stagger by half a coil so that their loops interleave, as in real head arrays.
  azimuth = (params.coil_rotation + 2 * jnp.pi * k / per_ring + jnp.pi / per_ring * (ring % 2)
             + params.coil_jitter[:, 0])
  ring_z = (ring - (rings - 1) / 2.0) * 1.8 * a
  z = ring_z + params.coil_jitter[:, 1]
  cos, sin = jnp.cos(azimuth), jnp.sin(azimuth)
  zeros = jnp.zeros_like(cos)
  normals = jnp.stack([cos, sin, zeros], -1)
  tangents = jnp.stack([-sin, cos, zeros], -1)
  centres = jnp.stack([radius_r * cos, radius_r * sin, z], -1)
  return centres, normals, tangents, a


def biot_savart_sensitivity(pts: jax.Array, params: SimulationParams,
                            segments: int = LOOP_SEGMENTS) -> jax.Array:
  """Complex sensitivities s = B_x − i·B_y of every loop at the given points.

  Args:
    pts: (P, 3) normalised coordinates.
    params: simulation parameters (geometry).
    segments: straight segments per loop (static).

  Returns:
    (C, P) complex64, unnormalised (unit current, μ0/4π dropped).
  """
  centres, normals, tangents, a = loop_geometry(params)
  del normals
  ez = jnp.array([0.0, 0.0, 1.0])
  theta = (jnp.arange(segments) + 0.5) * (2 * jnp.pi / segments)
  cos, sin = jnp.cos(theta)[:, None], jnp.sin(theta)[:, None]
  # Segment midpoints and vectors, (C, M, 3); the loop lies in the plane spanned by tangent and z.
  wire = centres[:, None, :] + a * (cos * tangents[:, None, :] + sin * ez)
  dl = a * (2 * jnp.pi / segments) * (-sin * tangents[:, None, :] + cos * ez)

  px, py, pz = pts[:, 0], pts[:, 1], pts[:, 2]

  def field(wire, dl):  # (..., M, 3) each -> (..., P) complex
    # One term per segment on (..., P) arrays with the points along the contiguous axis: XLA fuses
    # the sum into one vectorised loop (a reduction over a (.., M, P, 3) array did not vectorise).
    bx = by = 0.0
    for m in range(segments):
      (wx, wy, wz), (dlx, dly, dlz) = ([v[..., m, i, None] for i in range(3)] for v in (wire, dl))
      rx, ry, rz = px - wx, py - wy, pz - wz
      inv = jax.lax.rsqrt(rx * rx + ry * ry + rz * rz + WIRE_RADIUS**2) ** 3  # 1/|r|³
      # Only the transverse components of dl × r are needed.
      bx = bx + (dly * rz - dlz * ry) * inv
      by = by + (dlz * rx - dlx * rz) * inv
    return jax.lax.complex(bx, -by)

  if params.n_coils * segments * pts.shape[0] <= _BROADCAST_LIMIT:
    return field(wire, dl)
  return jax.lax.map(lambda c: field(*c), (wire, dl))  # bounded memory for large arrays/grids


def falloff_sensitivity(pts: jax.Array, params: SimulationParams) -> jax.Array:
  """Complex sensitivities of the distance-falloff model, |s| = (d + d0)^-p.

  Args:
    pts: (P, 3) normalised coordinates.
    params: simulation parameters (geometry, falloff_d0, falloff_power).

  Returns:
    (C, P) complex64, unnormalised.
  """
  centres, normals, tangents, _ = loop_geometry(params)
  r = pts[None, :, :] - centres[:, None, :]  # (C, P, 3)
  d = jnp.sqrt(jnp.sum(r * r, -1) + 1e-12)
  mag = (d + params.falloff_d0) ** (-params.falloff_power)
  # Angle in the transverse plane as seen from the coil: smooth everywhere inside the array.
  phase = jnp.arctan2(jnp.sum(r * tangents[:, None, :], -1), -jnp.sum(r * normals[:, None, :], -1))
  return (mag * jnp.exp(1j * phase)).astype(jnp.complex64)


def coarse_coil_maps(shape: Sequence[int], params: SimulationParams,
                     spacing: Sequence[float] | None = None) -> jax.Array:
  """The normalised coil maps of `coil_maps` on the coarse grid, before upsampling.

  Returns:
    (n_coils, *grid.coarse_shape(shape, params.coarse_size)) complex64.
  """
  shape = tuple(int(s) for s in shape)
  coarse = grid.coarse_shape(shape, params.coarse_size)
  pts = grid.points(coarse, grid.coarse_spacing(shape, coarse, spacing), params.slice_z)
  flat = pts.reshape(-1, 3)
  if params.coil_model == "biot_savart":
    sens = biot_savart_sensitivity(flat, params)
  else:
    sens = falloff_sensitivity(flat, params)
  sens = sens * jnp.exp(1j * params.coil_phase.astype(jnp.complex64))[:, None]
  rss = jnp.sqrt(jnp.sum(jnp.abs(sens) ** 2, axis=0))  # (P,)
  gamma = params.receive_strength
  target = rss ** gamma
  central = (flat[:, 0] ** 2 + flat[:, 1] ** 2) <= NORMALISATION_RADIUS**2
  target = target / (jnp.sum(jnp.where(central, target, 0.0)) / jnp.maximum(jnp.sum(central), 1))
  sens = sens * (target / rss)[None, :]
  return sens.reshape((params.n_coils,) + coarse)


def coil_maps(shape: Sequence[int], params: SimulationParams,
              spacing: Sequence[float] | None = None) -> jax.Array:
  """Complex receive sensitivity maps of `params.n_coils` loops for a 2-D slice or 3-D volume.

  The maps include each coil's phase offset and are scaled so that their root-sum-of-squares is
  rss_raw^γ (γ = `receive_strength`) with mean 1 over the central cylinder of radius 0.7
  (normalised units). Hence `rss(coil_maps)` is the receive bias field an RSS reconstruction
  imprints: smooth, positive, mean ≈ 1 in the head; γ = 0 makes it ≡ 1.

  Args:
    shape: spatial shape, (X, Y) or (X, Y, Z); z is the bore axis.
    params: simulation parameters.
    spacing: voxel size per axis (anisotropic voxels are handled physically).

  Returns:
    (n_coils, *shape) complex64.
  """
  return grid.upsample(coarse_coil_maps(shape, params, spacing), shape)
