"""Activations: the exact GELU (PyTorch's erf form) against float64 and jax.nn.gelu."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.layers import activations


def _gelu_and_derivative_float64(x):
  """x Phi(x) and Phi(x) + x phi(x) from math.erfc (exact in the tails; independent of jax)."""
  x = np.asarray(x, np.float64)
  cdf = np.vectorize(lambda v: math.erfc(-v / math.sqrt(2)) / 2)(x)
  pdf = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
  return x * cdf, cdf + x * pdf


def test_gelu_values_and_gradient_against_float64():
  x = np.concatenate([np.linspace(-12, 12, 481), np.random.default_rng(0).standard_normal(200)])
  w = np.random.default_rng(1).standard_normal(x.shape)
  y_ref, dy_ref = _gelu_and_derivative_float64(x)
  f = lambda x: (activations.get_activation("gelu")(x) * w).sum()
  x32 = jnp.asarray(x, jnp.float32)
  # 1 + erf rounds to 0 in the far negative tail: an absolute error < 1e-6 there.
  np.testing.assert_allclose(activations.gelu(x32), y_ref, rtol=1e-6, atol=1e-6)
  g = jax.grad(f)(x32)
  assert g.dtype == jnp.float32
  np.testing.assert_allclose(g, dy_ref * w, rtol=1e-5, atol=1e-6)
  with jax.enable_x64(True):
    g64 = jax.grad(f)(jnp.asarray(x, jnp.float64))
  np.testing.assert_allclose(g64, dy_ref * w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gelu_matches_jax_gelu(dtype):
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 5, 6)) * 3, dtype)
  ref, ref_vjp = jax.vjp(lambda x: jax.nn.gelu(x, approximate=False), x)
  y, vjp = jax.vjp(activations.gelu, x)
  (g,), (g_ref,) = vjp(jnp.ones_like(y)), ref_vjp(jnp.ones_like(ref))
  assert y.dtype == g.dtype == dtype
  tol = 1e-6 if dtype == jnp.float32 else 1e-2
  for a, b in ((y, ref), (g, g_ref)):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol,
                               atol=tol)
