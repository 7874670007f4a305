"""The CPU max pool equals nn.max_pool: values, gradients (first-max tie rule) and errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import errors
from jaxdl.layers import pool
from jaxdl.layers.conv import conv_impl

CASES = [
    # (name, x shape, window, strides, padding)
    ("stem 3x3/2 pad 1", (2, 9, 10, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ("stem 3x3/2 pad 1, even", (2, 8, 8, 2), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ("2x2/2 VALID odd (VGG)", (2, 7, 6, 4), (2, 2), (2, 2), "VALID"),
    ("2x2/2 SAME odd (cnn)", (1, 7, 5, 3), (2, 2), (2, 2), "SAME"),
    ("3x3/1 SAME", (2, 5, 6, 3), (3, 3), (1, 1), "SAME"),
    ("window < stride", (1, 9, 9, 2), (2, 2), (3, 3), "VALID"),
    ("1-D 3/2", (2, 11, 3), (3,), (2,), ((1, 1),)),
    ("3x2 / (3, 2) asymmetric pads", (2, 9, 8, 3), (3, 2), (3, 2), ((0, 2), (1, 0))),
    ("2x3 / (2, 1)", (2, 10, 7, 3), (2, 3), (2, 1), ((0, 1), (1, 1))),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_values_and_gradients_equal_nn_max_pool(case):
  _, xs, window, strides, padding = case
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
  ref_f = lambda x: nn.max_pool(x, window, strides, padding)  # noqa: E731
  f = lambda x: pool.max_pool(x, window, strides, padding, impl="fast")  # noqa: E731
  y_ref, vjp_ref = jax.vjp(ref_f, x)
  y, vjp = jax.vjp(f, x)
  np.testing.assert_array_equal(y, y_ref)
  g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], rtol=1e-6, atol=1e-6)
  if case is CASES[0]:  # reverse over reverse (the backward is made of differentiable ops)
    def penalty(fn):
      return jax.jit(jax.grad(
          lambda x: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.sin(fn(x))))(x) ** 2)))
    np.testing.assert_allclose(penalty(f)(x), penalty(ref_f)(x), rtol=1e-5, atol=1e-5)


def test_backward_over_chunks_of_images_equals_the_whole_batch(monkeypatch):
  """`_SCAN_CHUNKS` (False: the variant over the whole batch): the same gradient."""
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 9, 10, 3)), jnp.float32)
  args = ((3, 3), (2, 2), ((1, 1), (1, 1)))
  g = jnp.asarray(np.random.default_rng(3).standard_normal((4, 5, 5, 3)), jnp.float32)
  grad = lambda: jax.vjp(lambda x: pool.max_pool(x, *args, impl="fast"), x)[1](g)[0]
  assert "scan" in str(jax.make_jaxpr(grad)())
  chunked = grad()
  monkeypatch.setattr(pool, "_SCAN_CHUNKS", False)
  jax.clear_caches()  # the custom VJP's backward is traced once per shape and cached
  assert "scan" not in str(jax.make_jaxpr(grad)())
  np.testing.assert_array_equal(grad(), chunked)


def test_ties_send_the_gradient_to_the_first_maximum():
  """After a ReLU many windows are all zeros: one position gets the gradient, as in lax."""
  x = jnp.maximum(jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 8, 3)),
                              jnp.float32), 0.0).at[:, :4, :4].set(0.0)
  args = ((3, 3), (2, 2), ((1, 1), (1, 1)))
  g = jnp.ones((2, 4, 4, 3))
  got = jax.vjp(lambda x: pool.max_pool(x, *args, impl="fast"), x)[1](g)[0]
  want = jax.vjp(lambda x: nn.max_pool(x, *args), x)[1](g)[0]
  np.testing.assert_array_equal(got, want)
  assert float(jnp.sum(got)) == float(jnp.sum(g))  # every output's gradient lands once


def test_bfloat16_and_auto_dispatch():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 6, 6, 4)), jnp.bfloat16)
  y = pool.max_pool(x, (2, 2), (2, 2))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(y, nn.max_pool(x, (2, 2), (2, 2)))
  with conv_impl("xla"):
    jaxpr = str(jax.make_jaxpr(lambda x: pool.max_pool(x, (2, 2), (2, 2)))(x))
  assert "custom_vjp_call" not in jaxpr
  if jax.default_backend() == "cpu":
    jaxpr = str(jax.make_jaxpr(lambda x: pool.max_pool(x, (2, 2), (2, 2)))(x))
    assert "custom_vjp_call" in jaxpr


def test_wrong_rank_is_a_shape_error():
  with pytest.raises(errors.ShapeError, match="window"):
    pool.max_pool(jnp.ones((2, 6, 6, 3)), (2,), (2,), impl="fast")
