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

LOOP_SEGMENTS = 48
# Wire half-thickness in normalised units: regularises the 1/r^3 kernel for voxels next to a wire
# (only the corners of the field of view, outside the coil array, get that close).
WIRE_RADIUS = 0.05
# Radius (normalised) of the central cylinder over which the receive field is scaled to mean 1.
NORMALISATION_RADIUS = 0.7


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


def biot_savart_sensitivity(pts: jax.Array, params: SimulationParams) -> jax.Array:
  """Complex sensitivities s = B_x − i·B_y of every loop at the given points.

  Args:
    pts: (P, 3) normalised coordinates.
    params: simulation parameters (geometry).

  Returns:
    (C, P) complex64, unnormalised (unit current, μ0/4π dropped).
  """
  centres, normals, tangents, a = loop_geometry(params)
  del normals
  ez = jnp.array([0.0, 0.0, 1.0])
  theta = (jnp.arange(LOOP_SEGMENTS) + 0.5) * (2 * jnp.pi / LOOP_SEGMENTS)
  cos, sin = jnp.cos(theta)[:, None], jnp.sin(theta)[:, None]
  # Segment midpoints and vectors, (C, M, 3); the loop lies in the plane spanned by tangent and z.
  wire = centres[:, None, :] + a * (cos * tangents[:, None, :] + sin * ez)
  dl = a * (2 * jnp.pi / LOOP_SEGMENTS) * (-sin * tangents[:, None, :] + cos * ez)

  def field_of_coil(wire_c, dl_c):
    r = pts[None, :, :] - wire_c[:, None, :]  # (M, P, 3)
    inv = (jnp.sum(r * r, -1) + WIRE_RADIUS**2) ** -1.5  # (M, P)
    b = jnp.einsum("mpk,mp->pk", jnp.cross(jnp.broadcast_to(dl_c[:, None, :], r.shape), r), inv)
    return (b[:, 0] - 1j * b[:, 1]).astype(jnp.complex64)

  return jax.lax.map(lambda c: field_of_coil(*c), (wire, dl))


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
  return grid.upsample(sens.reshape((params.n_coils,) + coarse), shape)
