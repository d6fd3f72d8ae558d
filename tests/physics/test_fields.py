"""Coil maps and bias fields: physics checks, smoothness, positivity, documented normalisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mri_jax import physics
from mri_jax.physics import grid
from mri_jax.physics.coils import WIRE_RADIUS

SHAPE = (128, 128)
PTS = np.asarray(grid.points(SHAPE))
R2 = PTS[..., 0] ** 2 + PTS[..., 1] ** 2
HEAD = R2 <= 0.8**2  # where anatomy is (the array sits at radius 1.0–1.2)
CONFIGS = [("biot_savart", 1, 1), ("biot_savart", 8, 1), ("biot_savart", 32, 4),
           ("falloff", 1, 1), ("falloff", 8, 1), ("falloff", 32, 4)]


def test_biot_savart_matches_the_on_axis_field_of_a_loop():
  # Loop of radius a on the x axis at distance R (normal along x); on its axis B = B_x and, in
  # units of μ0·I/4π, B_axis(d) = 2π a² / (a² + d² + ε²)^(3/2) with ε the wire radius that
  # regularises the kernel (ε → 0 is the textbook formula; ε changes it by < 1% at d ≥ 0.3).
  # Every wire point is equidistant from the axis, so only the 48-segment quadrature remains:
  # it is spectrally accurate for this periodic integrand, hence the 0.1% bound.
  params = physics.make_params(1, coil_distance=1.1)
  _, _, _, a = physics.loop_geometry(params)
  x = np.linspace(-0.8, 0.8, 33)
  pts = jnp.stack([jnp.asarray(x), jnp.zeros(33), jnp.zeros(33)], -1).astype(jnp.float32)
  s = np.asarray(physics.biot_savart_sensitivity(pts, params))[0]
  d = 1.1 - x
  expected = 2 * np.pi * float(a) ** 2 / (float(a) ** 2 + d**2 + WIRE_RADIUS**2) ** 1.5
  np.testing.assert_allclose(np.abs(s.real), expected, rtol=1e-3)
  np.testing.assert_allclose(s.imag, 0.0, atol=1e-3 * expected.max())


def test_falloff_magnitude_follows_the_power_law():
  params = physics.make_params(1, coil_model="falloff", falloff_d0=0.2, falloff_power=2.0)
  centre = np.asarray(physics.loop_geometry(params)[0])[0]
  pts = jnp.asarray(np.random.default_rng(0).uniform(-0.7, 0.7, (100, 3)), jnp.float32)
  s = np.abs(np.asarray(physics.falloff_sensitivity(pts, params))[0])
  d = np.linalg.norm(np.asarray(pts) - centre, axis=-1)
  np.testing.assert_allclose(s, (d + 0.2) ** -2.0, rtol=1e-4)


@pytest.mark.parametrize("model,n_coils,rings", CONFIGS)
def test_receive_field_is_positive_smooth_and_normalised(model, n_coils, rings):
  params = physics.make_params(n_coils, n_rings=rings, coil_model=model)
  maps = physics.coil_maps(SHAPE, params)
  assert maps.shape == (n_coils,) + SHAPE and maps.dtype == jnp.complex64
  receive = np.asarray(physics.receive_field(maps))
  assert receive.min() > 0
  # Documented normalisation: mean 1 over the central cylinder of radius 0.7 (evaluated on the
  # coarse grid, so the full-resolution mean agrees to the upsampling error, < 1%).
  np.testing.assert_allclose(receive[R2 <= 0.49].mean(), 1.0, rtol=0.01)
  # Smooth: ≥ 99% of the energy of the head-windowed log field within 4 cycles per field of view
  # (anatomy has most of its energy far above that).
  log_field = np.log(receive)
  window = np.exp(-R2 / (2 * 0.35**2))
  centred = (log_field - (log_field * window).sum() / window.sum()) * window
  power = np.abs(np.fft.fft2(centred)) ** 2
  k = np.sqrt(np.add.outer(np.fft.fftfreq(SHAPE[0]) ** 2, np.fft.fftfreq(SHAPE[1]) ** 2)) * SHAPE[0]
  assert power[k <= 4].sum() / power.sum() >= 0.99
  # Bounded gradient inside the head: < 0.06 per voxel of the log field at 128² (a 6% change).
  gx, gy = np.gradient(log_field)
  assert np.sqrt(gx**2 + gy**2)[HEAD].max() < 0.06


@pytest.mark.parametrize("model,n_coils,rings", CONFIGS)
def test_coarse_grid_upsampling_is_close_to_direct_evaluation(model, n_coils, rings):
  params = physics.make_params(n_coils, n_rings=rings, coil_model=model)
  coarse = physics.coil_maps(SHAPE, params)
  direct = physics.coil_maps(SHAPE, params.replace(coarse_size=SHAPE[0]))
  r_c, r_d = (np.asarray(physics.receive_field(m)) for m in (coarse, direct))
  assert np.abs(r_c / r_d - 1)[HEAD].max() < 0.01  # measured ≤ 0.63%
  err = np.abs(np.asarray(coarse) - np.asarray(direct)).max(0)
  assert err[HEAD].max() / r_d[HEAD].min() < 0.06  # measured ≤ 5.3% (1 large loop)


def test_receive_strength_interpolates_between_uniform_and_physical():
  base = physics.make_params(8)
  raw = np.asarray(physics.receive_field(physics.coil_maps(SHAPE, base)))
  flat = np.asarray(physics.receive_field(physics.coil_maps(SHAPE, base.replace(receive_strength=jnp.float32(0.0)))))
  half = np.asarray(physics.receive_field(physics.coil_maps(SHAPE, base.replace(receive_strength=jnp.float32(0.5)))))
  np.testing.assert_allclose(flat[HEAD], 1.0, atol=0.01)
  # γ = 1/2 is the square root of the raw field up to the mean normalisation.
  ratio = half[HEAD] / np.sqrt(raw[HEAD])
  assert ratio.std() / ratio.mean() < 0.01


def test_maps_handle_anisotropic_voxels_physically():
  # The same physical field of view sampled 64×64 at 2 mm or 64×128 at (2, 1) mm must give the same
  # receive field at the same physical points.
  params = physics.make_params(8)
  iso = np.asarray(physics.receive_field(physics.coil_maps((64, 64), params, (2.0, 2.0))))
  aniso = np.asarray(physics.receive_field(physics.coil_maps((64, 128), params, (2.0, 1.0))))
  resampled = 0.5 * (aniso[:, 0::2] + aniso[:, 1::2])
  np.testing.assert_allclose(resampled, iso, rtol=0.02)


def test_transmit_field_range_and_centre():
  params = physics.make_params(1, b1_amplitude=0.4, b1_width=0.5)
  b1 = np.asarray(physics.transmit_field(SHAPE, params))
  assert 0.8 - 1e-6 <= b1.min() and b1.max() <= 1.2 + 1e-6
  assert b1[64, 64] > b1[5, 64]  # central brightening
  assert np.asarray(physics.transmit_field(SHAPE, params.replace(b1_amplitude=jnp.float32(0.0)))).std() == 0


def _torchio_reference(shape3d, order, coefficients):
  """Transcription of TorchIO's RandomBiasField.generate_bias_field (NumPy, 'xy' meshgrid + transpose)."""
  half = np.array(shape3d) / 2
  ranges = [np.arange(-n, n) + 0.5 for n in half]
  meshes = np.asarray(np.meshgrid(*ranges))
  for mesh in meshes:
    if mesh.max() > 0:
      mesh /= mesh.max()
  x, y, z = meshes
  field = np.zeros(shape3d)
  i = 0
  for xo in range(order + 1):
    for yo in range(order + 1 - xo):
      for zo in range(order + 1 - (xo + yo)):
        field += np.transpose(coefficients[i] * x**xo * y**yo * z**zo, (1, 0, 2))
        i += 1
  return np.exp(field)


@pytest.mark.parametrize("shape", [(20, 17, 9), (16, 16)])
def test_polynomial_field_reproduces_torchio(shape):
  order = 3
  coefficients = np.random.default_rng(1).uniform(-0.5, 0.5, physics.n_poly_terms(order))
  ours = np.asarray(physics.polynomial_field(jnp.asarray(coefficients), shape, order))
  shape3d = shape if len(shape) == 3 else shape + (1,)  # TorchIO sees a 2-D image as one slice
  ref = _torchio_reference(shape3d, order, coefficients).reshape(shape)
  np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_legendre_field_matches_numpy_legendre():
  order = 3
  shape = (12, 10, 8)
  coefficients = np.random.default_rng(2).uniform(-0.3, 0.3, physics.n_poly_terms(order))
  c = np.zeros((order + 1,) * 3)
  for value, (i, j, k) in zip(coefficients, physics.poly_exponents(order)):
    c[i, j, k] = value
  axes = [np.linspace(-1, 1, n) for n in shape]
  ref = np.exp(np.polynomial.legendre.leggrid3d(*axes, c))
  ours = np.asarray(physics.legendre_field(jnp.asarray(coefficients), shape, order))
  np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_total_bias_is_the_product_and_positive():
  params = physics.sample_params(jax.random.key(0), {"n_coils": 8, "poly_coefficient": 0.5, "b1_amplitude": (0.1, 0.4)})
  out = physics.simulate(jax.random.key(1), jnp.ones(SHAPE), params)
  np.testing.assert_allclose(out.bias, out.transmit * out.polynomial * out.receive, rtol=1e-6)
  assert float(out.bias.min()) > 0


@pytest.mark.parametrize("n_coils", [1, 8])
def test_loop_quadrature_has_converged(n_coils):
  # 16 straight segments (the default) against 192: the periodic trapezoid rule converges
  # exponentially, measured < 1e-5 relative inside the head; 1e-4 leaves float32 room.
  pts = grid.points((64, 64)).reshape(-1, 3)
  head = np.asarray(pts[:, 0] ** 2 + pts[:, 1] ** 2 <= 0.64)
  params = physics.make_params(n_coils)
  ref = np.asarray(physics.biot_savart_sensitivity(pts, params, segments=192))[:, head]
  ours = np.asarray(physics.biot_savart_sensitivity(pts, params))[:, head]
  assert (np.abs(ours - ref) / np.abs(ref)).max() < 1e-4


def test_fast_upsampling_equals_the_dense_interpolation_matrices():
  """`grid.upsample` (4 gathered taps on the first axis, matrices on the others) == the dense
  separable product with `interpolation_matrix`, for complex 3-D fields and 2-D batches."""
  rng = np.random.default_rng(0)
  field = rng.normal(size=(3, 8, 6, 5)) + 1j * rng.normal(size=(3, 8, 6, 5))
  dense = field
  for ax, n in enumerate((37, 24, 9)):
    dense = np.moveaxis(np.tensordot(grid.interpolation_matrix(n, dense.shape[1 + ax]), dense,
                                     axes=((1,), (1 + ax,))), 0, 1 + ax)
  fast = grid.upsample(jnp.asarray(field, jnp.complex64), (37, 24, 9))
  np.testing.assert_allclose(np.asarray(fast), dense, rtol=1e-5, atol=1e-5)
  slices = rng.normal(size=(4, 8, 8)).astype(np.float32)
  want = np.einsum("ia,jb,nab->nij", grid.interpolation_matrix(64, 8), grid.interpolation_matrix(50, 8), slices)
  np.testing.assert_allclose(np.asarray(grid.upsample(jnp.asarray(slices), (64, 50))), want, rtol=1e-5, atol=1e-5)
