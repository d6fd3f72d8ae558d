"""Smooth multiplicative intensity fields: transmit (B1+), receive, and random polynomial fields.

* `transmit_field`: relative B1+ magnitude, 1 + A·(g − 1/2) with g a Gaussian bump (central
  brightening at high field for A > 0). In the small-flip-angle limit the signal scales linearly
  with it, which is how `simulate` applies it.
* `receive_field`: the root-sum-of-squares of the coil maps (what an RSS reconstruction imprints).
* `polynomial_field`: exp of a polynomial on per-axis coordinates linspace(−1, 1, n), in TorchIO's
  `RandomBiasField` monomial basis and coefficient order, so a TorchIO field is reproduced exactly
  from its coefficients (2-D images are TorchIO's single-slice volumes: every z term vanishes).
* `legendre_field`: the same with Legendre polynomials P_i(x)P_j(y)P_k(z) (MONAI-style basis,
  same coefficient order as `polynomial_field`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mri_jax.physics import grid
from mri_jax.physics.params import SimulationParams


def poly_exponents(order: int) -> np.ndarray:
  """(n_terms, 3) exponents (i, j, k), i + j + k <= order, in TorchIO's loop order."""
  return np.array([(i, j, k) for i in range(order + 1) for j in range(order + 1 - i)
                   for k in range(order + 1 - i - j)], np.int32)


def _unit_axes(shape: Sequence[int]) -> list[jax.Array]:
  # TorchIO's coordinates: (arange(-n/2, n/2) + 0.5) / max == linspace(-1, 1, n); 0 for n == 1.
  axes = [jnp.linspace(-1.0, 1.0, n) if n > 1 else jnp.zeros((1,)) for n in shape]
  if len(axes) == 2:
    axes.append(jnp.zeros((1,)))
  return axes


def _basis_field(coefficients: jax.Array, shape: Sequence[int], order: int, basis) -> jax.Array:
  exps = poly_exponents(order)
  coefficients = jnp.asarray(coefficients, jnp.float32)
  if coefficients.shape != (len(exps),):
    raise ValueError(f"order {order} needs {len(exps)} coefficients, got shape {coefficients.shape}")
  ax = _unit_axes(shape)
  # Per-axis tables (order+1, n): the sum over terms is a small tensor contraction.
  tables = [jnp.stack([basis(a, d) for d in range(order + 1)]) for a in ax]
  coeff = jnp.zeros((order + 1,) * 3).at[exps[:, 0], exps[:, 1], exps[:, 2]].add(coefficients)
  log_field = jnp.einsum("ijk,ix,jy,kz->xyz", coeff, *tables)
  if len(shape) == 2:
    log_field = log_field[..., 0]
  return jnp.exp(log_field)


def _monomial(x, d):
  return x**d


def _legendre(x, d):
  p_prev, p = jnp.ones_like(x), x
  if d == 0:
    return p_prev
  for n in range(1, d):
    p_prev, p = p, ((2 * n + 1) * x * p - n * p_prev) / (n + 1)
  return p


def polynomial_field(coefficients: jax.Array, shape: Sequence[int], order: int = 3) -> jax.Array:
  """exp(Σ c_ijk x^i y^j z^k): TorchIO's `RandomBiasField` for given coefficients.

  Args:
    coefficients: (n_poly_terms(order),) in TorchIO's order (x outermost, then y, then z).
    shape: (X, Y) or (X, Y, Z).
    order: maximum total degree.

  Returns:
    Positive float32 field of `shape`.
  """
  return _basis_field(coefficients, shape, order, _monomial)


def legendre_field(coefficients: jax.Array, shape: Sequence[int], order: int = 3) -> jax.Array:
  """exp(Σ c_ijk P_i(x) P_j(y) P_k(z)) with Legendre polynomials; coefficient order as above."""
  return _basis_field(coefficients, shape, order, _legendre)


def transmit_field(shape: Sequence[int], params: SimulationParams,
                   spacing: Sequence[float] | None = None) -> jax.Array:
  """Relative transmit (B1+) magnitude 1 + A·(exp(−|r − c|²/2w²) − 1/2), in [1 − A/2, 1 + A/2].

  Args:
    shape: (X, Y) or (X, Y, Z).
    params: uses b1_amplitude A, b1_center c, b1_width w and slice_z (2-D).
    spacing: voxel size per axis.

  Returns:
    float32 field of `shape`; positive for |A| < 2.
  """
  # The Gaussian bump is separable: an outer product of one 1-D Gaussian per axis (cheap).
  axes = grid.normalized_axes(shape, spacing)
  if len(shape) == 2:
    axes.append(jnp.reshape(jnp.asarray(params.slice_z, jnp.float32), (1,)))
  factors = [jnp.exp(-((a - params.b1_center[i]) ** 2) / (2 * params.b1_width**2))
             for i, a in enumerate(axes)]
  bump = factors[0][:, None, None] * factors[1][None, :, None] * factors[2][None, None, :]
  return 1.0 + params.b1_amplitude * (bump.reshape(tuple(shape)) - 0.5)


def receive_field(maps: jax.Array) -> jax.Array:
  """Root-sum-of-squares of coil maps over the leading coil axis: the RSS receive bias."""
  return jnp.sqrt(jnp.sum(jnp.real(maps) ** 2 + jnp.imag(maps) ** 2, axis=0))
