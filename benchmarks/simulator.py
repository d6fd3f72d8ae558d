"""Simulator throughput: JAX (jit, vmap) vs a straightforward NumPy implementation of the same model.

Run:  python benchmarks/simulator.py [--quick]

Cases (as in the project's issue): vmapped 2-D 128² single-coil slices (slices/s), 2-D 256² slices
with 8 coils (slices/s), one 3-D 256³ volume with 8 coils (s/volume). Both implementations use the
same model: loops by Biot–Savart on a 32-point coarse grid, the same cubic upsampling matrices,
transmit + polynomial fields, complex Gaussian noise, RSS. Before timing, the noise-free outputs of
both are compared (max relative difference) to show they compute the same thing. NumPy uses
float32/complex64, like JAX, so the ratio measures the implementation, not the precision.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from mri_jax import physics
from mri_jax.physics import coils as coils_lib
from mri_jax.physics import grid

CFG = {"noise_sigma": 0.05, "poly_coefficient": 0.3, "b1_amplitude": 0.2, "receive_strength": 0.7}


# ----------------------------------------------------------------------------------------------
# NumPy reference (single-threaded NumPy apart from BLAS; float32 / complex64)
# ----------------------------------------------------------------------------------------------
def np_points(shape, spacing, z):
  spacing = np.asarray(spacing, np.float32)
  extent = np.asarray(shape, np.float32) * spacing
  half = extent.max() / 2
  axes = [((np.arange(n) + 0.5) * spacing[i] - extent[i] / 2) / half for i, n in enumerate(shape)]
  mesh = list(np.meshgrid(*axes, indexing="ij"))
  if len(shape) == 2:
    mesh.append(np.full(mesh[0].shape, z, np.float32))
  return np.stack(mesh, -1).astype(np.float32)


def np_coil_maps(shape, p):
  n, rings = p["n_coils"], p["n_rings"]
  per_ring = n // rings
  idx = np.arange(n)
  ring, k = idx // per_ring, idx % per_ring
  r_ring = p["coil_distance"]
  a = p["coil_size"] * min(np.pi * r_ring / per_ring, 0.5 * r_ring)
  az = p["coil_rotation"] + 2 * np.pi * k / per_ring + np.pi / per_ring * (ring % 2) + p["coil_jitter"][:, 0]
  z = (ring - (rings - 1) / 2) * 1.8 * a + p["coil_jitter"][:, 1]
  tang = np.stack([-np.sin(az), np.cos(az), np.zeros(n)], -1)
  centres = np.stack([r_ring * np.cos(az), r_ring * np.sin(az), z], -1)
  coarse = tuple(min(s, p["coarse_size"]) for s in shape)
  cs = np.asarray(shape, np.float32) / np.asarray(coarse, np.float32)
  pts = np_points(coarse, cs, p["slice_z"]).reshape(-1, 3)
  m = coils_lib.LOOP_SEGMENTS
  th = (np.arange(m) + 0.5) * 2 * np.pi / m
  ez = np.array([0.0, 0.0, 1.0])
  sens = np.empty((n, pts.shape[0]), np.complex64)
  for c in range(n):
    wire = centres[c] + a * (np.cos(th)[:, None] * tang[c] + np.sin(th)[:, None] * ez)
    dl = a * 2 * np.pi / m * (-np.sin(th)[:, None] * tang[c] + np.cos(th)[:, None] * ez)
    b = np.zeros((pts.shape[0], 3), np.float32)
    for j in range(m):
      r = pts - wire[j]
      inv = (np.sum(r * r, -1) + coils_lib.WIRE_RADIUS**2) ** -1.5
      b += np.cross(dl[j], r) * inv[:, None]
    sens[c] = (b[:, 0] - 1j * b[:, 1]) * np.exp(1j * p["coil_phase"][c])
  rss = np.sqrt(np.sum(np.abs(sens) ** 2, 0))
  target = rss ** p["receive_strength"]
  central = pts[:, 0] ** 2 + pts[:, 1] ** 2 <= coils_lib.NORMALISATION_RADIUS**2
  target = target / target[central].mean()
  maps = (sens * (target / rss)).reshape((n,) + coarse)
  for ax, size in enumerate(shape):
    if maps.shape[1 + ax] != size:
      maps = np.moveaxis(np.tensordot(grid.interpolation_matrix(size, maps.shape[1 + ax]), maps,
                                      axes=((1,), (1 + ax,))), 0, 1 + ax)
  return maps.astype(np.complex64)


def np_simulate(rng, clean, p):
  shape = clean.shape
  maps = np_coil_maps(shape, p)
  pts = np_points(shape, np.ones(len(shape)), p["slice_z"])
  d2 = np.sum((pts - p["b1_center"]) ** 2, -1)
  transmit = 1 + p["b1_amplitude"] * (np.exp(-d2 / (2 * p["b1_width"] ** 2)) - 0.5)
  axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape] + ([np.zeros(1, np.float32)] if len(shape) == 2 else [])
  log_poly = np.zeros([len(a) for a in axes], np.float32)
  for c, (i, j, k) in zip(p["poly_coefficients"], physics.poly_exponents(p["poly_order"])):
    log_poly += c * axes[0][:, None, None] ** i * axes[1][None, :, None] ** j * axes[2][None, None, :] ** k
  signal = clean * transmit * np.exp(log_poly).reshape(shape)
  sigma = p["noise_sigma"] * clean.max()
  acc = np.zeros(shape, np.float32)
  for c in range(p["n_coils"]):
    coil = maps[c] * signal
    if sigma > 0:
      coil = coil + sigma * (rng.standard_normal(shape, np.float32) + 1j * rng.standard_normal(shape, np.float32))
    acc += coil.real**2 + coil.imag**2
  return np.sqrt(acc)


def to_numpy_params(params):
  return {k: v if isinstance(v, (int, str)) else (np.asarray(v) if np.ndim(v) else float(v))
          for k, v in vars(params).items()}


# ----------------------------------------------------------------------------------------------
def timed(fn, repeats):
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return best


def case_2d(size, n_coils, batch, np_slices, repeats):
  cfg = dict(CFG, n_coils=n_coils)
  keys = jax.random.split(jax.random.key(0), batch)
  params = jax.vmap(lambda k: physics.sample_params(k, cfg))(keys)
  clean = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (batch, size, size)), jnp.float32)
  run = jax.jit(jax.vmap(lambda k, c, p: physics.simulate(k, c, p).image))
  jax.block_until_ready(run(keys, clean, params))  # compile
  t_jax = timed(lambda: run(keys, clean, params), repeats)
  # Same model check (noise-free), then NumPy timing on a subset of slices.
  p0 = jax.tree.map(lambda x: x[0], params).replace(noise_sigma=jnp.float32(0.0))
  ref = np_simulate(np.random.default_rng(0), np.asarray(clean[0]), to_numpy_params(p0))
  ours = np.asarray(physics.simulate(keys[0], clean[0], p0).image)
  agree = float(np.abs(ours - ref).max() / np.abs(ref).max())
  rng = np.random.default_rng(0)
  np_params = [to_numpy_params(jax.tree.map(lambda x: x[i], params)) for i in range(np_slices)]
  clean_np = np.asarray(clean[:np_slices])
  t0 = time.perf_counter()
  for i in range(np_slices):
    np_simulate(rng, clean_np[i], np_params[i])
  t_np = (time.perf_counter() - t0) / np_slices
  return dict(jax=batch / t_jax, numpy=1 / t_np, ratio=(batch / t_jax) * t_np, agree=agree)


def case_3d(size, n_coils, repeats):
  cfg = dict(CFG, n_coils=n_coils)
  params = physics.sample_params(jax.random.key(1), cfg)
  clean = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (size,) * 3), jnp.float32)
  run = jax.jit(lambda k, c, p: physics.simulate(k, c, p).image)
  jax.block_until_ready(run(jax.random.key(2), clean, params))
  t_jax = timed(lambda: run(jax.random.key(2), clean, params), repeats)
  p_np = to_numpy_params(params)
  t0 = time.perf_counter()
  np_simulate(np.random.default_rng(0), np.asarray(clean), p_np)
  t_np = time.perf_counter() - t0
  ours = np.asarray(run(jax.random.key(2), clean, params.replace(noise_sigma=jnp.float32(0.0))))
  ref = np_simulate(np.random.default_rng(0), np.asarray(clean), dict(p_np, noise_sigma=0.0))
  agree = float(np.abs(ours - ref).max() / np.abs(ref).max())
  return dict(jax=t_jax, numpy=t_np, ratio=t_np / t_jax, agree=agree)


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--quick", action="store_true", help="small sizes (smoke test, not the recorded figures)")
  args = ap.parse_args()
  dev = jax.devices()[0]
  print(f"machine: {platform.processor() or platform.machine()}, {jax.device_count()} x {dev.platform} "
        f"({getattr(dev, 'device_kind', '')}), jax {jax.__version__}, numpy {np.__version__}")
  if args.quick:
    cases = [("2D 64² 1 coil", case_2d(64, 1, 64, 8, 2)), ("3D 48³ 8 coils", case_3d(48, 8, 1))]
  else:
    cases = [("2D 128² 1 coil (vmap, batch 512)", case_2d(128, 1, 512, 64, 3)),
             ("2D 256² 8 coils (vmap, batch 64)", case_2d(256, 8, 64, 8, 2)),
             ("3D 256³ 8 coils (jit)", case_3d(256, 8, 2))]
  print("| case | JAX | NumPy | JAX / NumPy | same model (max rel diff, no noise) |")
  print("|---|---|---|---|---|")
  for name, r in cases:
    if name.startswith("3D"):
      print(f"| {name} | {r['jax']:.2f} s/volume | {r['numpy']:.2f} s/volume | {r['ratio']:.1f}x | {r['agree']:.1e} |")
    else:
      print(f"| {name} | {r['jax']:.0f} slices/s | {r['numpy']:.1f} slices/s | {r['ratio']:.1f}x | {r['agree']:.1e} |")


if __name__ == "__main__":
  main()
