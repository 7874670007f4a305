"""Depthwise convolution: the CPU-fast shifted sums equal the grouped convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import errors
from jaxdl.layers.depthwise import DepthwiseConv, depthwise_conv


def _reference_float64(x, kernel):
  """Direct loop over the K x K taps in float64 numpy."""
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  kh, kw = kernel.shape[:2]
  n, h, w, c = x.shape
  xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  out = np.zeros_like(x)
  for i in range(kh):
    for j in range(kw):
      out += xp[:, i:i + h, j:j + w, :] * kernel[i, j, 0]
  return out


@pytest.mark.parametrize("k", [3, 7])
def test_shifted_and_conv_match_float64_values_and_gradients(k):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 9, 11, 5)).astype(np.float32)
  kernel = rng.standard_normal((k, k, 1, 5)).astype(np.float32)
  ref = _reference_float64(x, kernel)
  outs, grads = {}, {}
  for impl in ("conv", "shifted"):
    f = jax.jit(lambda x, w, impl=impl: depthwise_conv(x, w, impl=impl))
    outs[impl] = np.asarray(f(x, kernel))
    np.testing.assert_allclose(outs[impl], ref, rtol=1e-5, atol=1e-5)
    loss = lambda x, w, impl=impl: jnp.sum(jnp.sin(depthwise_conv(x, w, impl=impl)))
    grads[impl] = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
  for a, b in zip(grads["conv"], grads["shifted"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_module_has_nn_conv_parameters_and_outputs():
  import flax.linen as nn
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 8, 6)), jnp.float32)
  conv = nn.Conv(6, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=6)
  v = conv.init(jax.random.key(0), x)
  mine = DepthwiseConv(7, impl="shifted")
  assert jax.tree.map(jnp.shape, mine.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, v)
  np.testing.assert_allclose(mine.apply(v, x), conv.apply(v, x), rtol=1e-5, atol=1e-5)
  y16 = DepthwiseConv(7, dtype=jnp.bfloat16).apply(v, x)
  assert y16.dtype == jnp.bfloat16


def test_bad_kernel_and_impl_are_one_line_errors():
  x = jnp.zeros((1, 4, 4, 3))
  with pytest.raises(errors.ShapeError, match="odd"):
    depthwise_conv(x, jnp.zeros((2, 2, 1, 3)))
  with pytest.raises(errors.ConfigError, match="impl"):
    depthwise_conv(x, jnp.zeros((3, 3, 1, 3)), impl="fft")


def test_auto_follows_the_conv_impl_context():
  """impl="auto" is the `conv_impl` context's choice: a grouped convolution under "xla"
  (what GPU code and the FLOP counts of tools/bench_gpu.py trace on a CPU host), the shifted
  sums under "fast"; "conv" and "shifted" ignore the context."""
  from jaxdl.layers import conv as lc
  x, kernel = jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 1, 4))

  def has_conv(impl):
    jaxpr = jax.make_jaxpr(lambda x, k: depthwise_conv(x, k, impl=impl))(x, kernel)
    return "conv_general_dilated" in str(jaxpr)
  with lc.conv_impl("xla"):
    assert has_conv("auto") and not has_conv("shifted")
  with lc.conv_impl("fast"):
    assert not has_conv("auto") and has_conv("conv")
