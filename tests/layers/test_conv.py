"""The CPU-fast convolution formulations equal a float64 convolution, values and gradients."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import compiler, errors
from jaxdl.layers import conv as lc

DN = ("NHWC", "HWIO", "NHWC")


def _reference_float64(x, w, strides, pads, groups):
  """Direct sum over the kernel taps in float64 numpy (NHWC, HWIO, explicit pads)."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  kh, kw, cg, o = w.shape
  xp = np.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  ho = (xp.shape[1] - kh) // strides[0] + 1
  wo = (xp.shape[2] - kw) // strides[1] + 1
  n, c = x.shape[0], x.shape[3]
  out = np.zeros((n, ho, wo, groups, o // groups))
  for i in range(kh):
    for j in range(kw):
      xs = xp[:, i:i + strides[0] * (ho - 1) + 1:strides[0],
              j:j + strides[1] * (wo - 1) + 1:strides[1], :].reshape(n, ho, wo, groups, cg)
      out += np.einsum("nhwgc,cgo->nhwgo", xs, w[i, j].reshape(cg, groups, o // groups))
  return out.reshape(n, ho, wo, o)


def _explicit_pads(x_shape, w_shape, strides, padding):
  if isinstance(padding, str):
    return jax.lax.padtype_to_pads(x_shape[1:3], w_shape[:2], strides, padding)
  return padding


CASES = [
    # (name, x shape, kernel shape, strides, padding, groups)
    ("pointwise", (2, 6, 7, 5), (1, 1, 5, 8), (1, 1), "VALID", 1),
    ("pointwise stride 2 SAME odd", (2, 7, 9, 5), (1, 1, 5, 3), (2, 2), "SAME", 1),
    ("pointwise padded", (1, 5, 5, 4), (1, 1, 4, 6), (1, 2), ((1, 1), (0, 2)), 1),
    ("patchify 4x4", (2, 9, 10, 3), (4, 4, 3, 7), (4, 4), "VALID", 1),
    ("patchify 2x2 padded", (2, 7, 6, 5), (2, 2, 5, 4), (2, 2), ((0, 1), (0, 0)), 1),
    ("depthwise 3x3", (2, 8, 9, 6), (3, 3, 1, 6), (1, 1), ((1, 1), (1, 1)), 6),
    ("depthwise 3x3 asymmetric pads", (2, 7, 8, 5), (3, 3, 1, 5), (1, 1),
     ((0, 2), (2, 1)), 5),
    ("depthwise 3x3 pads >= K (padded-input VJP)", (1, 5, 6, 3), (3, 3, 1, 3), (1, 1),
     ((3, 1), (0, 4)), 3),
    ("depthwise 5x5 stride 2", (2, 11, 10, 4), (5, 5, 1, 4), (2, 2), ((2, 2), (2, 2)), 4),
    ("depthwise 3x3 stride 2 SAME even", (1, 8, 8, 3), (3, 3, 1, 3), (2, 2), "SAME", 3),
    ("3x3 stride 1 (conv forward, custom VJP)", (2, 6, 6, 4), (3, 3, 4, 5), (1, 1), "SAME", 1),
    ("5x3 stride 1 asymmetric pads (conv forward, custom VJP)", (2, 7, 6, 3), (5, 3, 3, 4),
     (1, 1), ((0, 3), (2, 1)), 1),
    ("3x3 stride 1 F <= C/2 (tap sum, custom VJP)", (2, 6, 5, 8), (3, 3, 8, 3), (1, 1),
     "SAME", 1),
    ("3x2 stride 1 F <= C/2 padded (tap sum, custom VJP)", (2, 5, 6, 6), (3, 2, 6, 2),
     (1, 1), ((0, 2), (1, 0)), 1),
    ("3x3 stride 2 (fallback)", (2, 7, 7, 4), (3, 3, 4, 5), (2, 2), "SAME", 1),
    ("grouped (fallback)", (2, 6, 6, 4), (3, 3, 2, 6), (1, 1), "SAME", 2),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fast_and_xla_match_float64_values_and_gradients(case):
  name, xs, ws, strides, padding, groups = case
  rng = np.random.default_rng(0)
  x = rng.standard_normal(xs).astype(np.float32)
  w = rng.standard_normal(ws).astype(np.float32)
  ref = _reference_float64(x, w, strides, _explicit_pads(xs, ws, strides, padding), groups)

  def f(x, w, impl):
    return lc.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN,
                                   feature_group_count=groups, impl=impl)

  grads = {}
  for impl in ("xla", "fast"):
    out = np.asarray(jax.jit(f, static_argnums=2)(x, w, impl))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    loss = lambda x, w, impl=impl: jnp.sum(jnp.sin(f(x, w, impl)))
    grads[impl] = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
  for a, b in zip(grads["xla"], grads["fast"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # The fast formulations really avoid the convolution (and the fallbacks keep it); dense
  # stride-1 convolutions keep it forward, under a custom VJP.
  jaxpr = str(jax.make_jaxpr(f, static_argnums=2)(x, w, "fast"))
  assert ("conv_general_dilated" in jaxpr) == (
      "fallback" in name or ("custom VJP" in name and "tap sum" not in name))
  assert ("custom_vjp_call" in jaxpr) == (
      "custom VJP" in name or (name.startswith("depthwise") and strides == (1, 1)))


def test_one_dimensional_pointwise_and_dilated_fallback():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((3, 10, 4)).astype(np.float32)
  w = rng.standard_normal((1, 4, 6)).astype(np.float32)
  ref = np.einsum("nlc,co->nlo", x.astype(np.float64)[:, ::3], w[0].astype(np.float64))
  out = lc.conv_general_dilated(x, w, (3,), "VALID", dimension_numbers=("NHC", "HIO", "NHC"),
                                impl="fast")
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  w3 = rng.standard_normal((3, 4, 6)).astype(np.float32)
  kw = dict(rhs_dilation=(2,), dimension_numbers=("NHC", "HIO", "NHC"))
  np.testing.assert_array_equal(
      lc.conv_general_dilated(x, w3, (1,), "SAME", impl="fast", **kw),
      jax.lax.conv_general_dilated(x, w3, (1,), "SAME", **kw))


def test_nn_conv_drop_in_same_parameters_outputs_and_dtype():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 8, 8, 6)), jnp.float32)
  for kwargs in (dict(features=10, kernel_size=(1, 1), strides=(2, 2)),
                 dict(features=6, kernel_size=(7, 7), padding=3, feature_group_count=6)):
    plain = nn.Conv(**kwargs)
    v = plain.init(jax.random.key(0), x)
    with lc.conv_impl("fast"):
      mine = lc.Conv(**kwargs)
      assert (jax.tree.map(jnp.shape, mine.init(jax.random.key(0), x))
              == jax.tree.map(jnp.shape, v))
      np.testing.assert_allclose(mine.apply(v, x), plain.apply(v, x), rtol=1e-5, atol=1e-5)
      assert lc.Conv(dtype=jnp.bfloat16, **kwargs).apply(v, x).dtype == jnp.bfloat16


def test_bad_impl_is_a_one_line_error():
  x, w = jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 1, 3, 2))
  with pytest.raises(errors.ConfigError, match="impl"):
    lc.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DN, impl="fft")
  with pytest.raises(errors.ConfigError, match="impl"):
    with lc.conv_impl("cudnn"):
      pass


def _bfloat16_fast_and_float32_xla_grads(f, x, w):
  """Gradients of sum(f) through impl="fast" in bfloat16 (dtypes checked) and "xla" in float32."""
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  gx, gw = jax.grad(lambda x, w: jnp.sum(f(x, w, "fast").astype(jnp.float32)),
                    argnums=(0, 1))(xb, wb)
  assert gx.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
  gx32, gw32 = jax.grad(lambda x, w: jnp.sum(f(x, w, "xla")), argnums=(0, 1))(x, w)
  return gx, gw, gx32, gw32


def test_depthwise_custom_vjp_dtypes_1d_and_second_order():
  """The stride-1 depthwise VJP: 1-D, bfloat16 in/out dtypes, and grad of grad vs the conv."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 9, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((5, 1, 4)), jnp.float32)
  dn = ("NHC", "HIO", "NHC")

  def f(x, w, impl):
    return lc.conv_general_dilated(x, w, (1,), ((2, 2),), dimension_numbers=dn,
                                   feature_group_count=4, impl=impl)

  def loss(x, w, impl):
    return jnp.sum(jnp.sin(f(x, w, impl)))

  def grad_norm(x, w, impl):  # a gradient penalty: reverse over reverse
    gx, gw = jax.grad(loss, argnums=(0, 1))(x, w, impl)
    return jnp.sum(gx * gx) + jnp.sum(gw * gw)

  for fn in (loss, grad_norm):
    got = jax.grad(fn, argnums=(0, 1))(x, w, "fast")
    want = jax.grad(fn, argnums=(0, 1))(x, w, "xla")
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  gx, gw, gx32, gw32 = _bfloat16_fast_and_float32_xla_grads(f, x, w)
  np.testing.assert_allclose(gx.astype(jnp.float32), gx32, rtol=3e-2, atol=3e-2)
  np.testing.assert_allclose(gw.astype(jnp.float32), gw32, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("shape,window,budget_rows", [
    ((3, 10, 7, 5), (7, 7), 2),     # blocks of 2 rows, the 7x7 window taller than a block
    ((2, 9, 6, 4), (3, 3), 4),      # 9 rows: no divisor within budget above 3 -> blocks of 3
    ((2, 7, 4, 3), (5, 5), 0),      # budget below one row: blocks of one row
    ((2, 11, 3), (5,), 3),          # 1-D
    ((1, 4, 3, 5, 2), (3, 2, 3), 1),  # 3-D: blocks along the first spatial axis
])
def test_depthwise_kernel_gradient_over_row_blocks_against_float64(monkeypatch, shape, window,
                                                                   budget_rows):
  """`_depthwise_kernel_grad` (a scan over blocks of rows of one image) equals the per-tap
  sums of shifted x times g over all images and positions, computed in float64."""
  rng = np.random.default_rng(5)
  n = len(window)
  padded = (shape[0],) + tuple(s + k - 1 for s, k in zip(shape[1:-1], window)) + shape[-1:]
  xp = rng.standard_normal(padded)
  g = rng.standard_normal(shape)
  row_bytes = int(np.prod(shape[2:])) * 4
  monkeypatch.setattr(lc, "_ROW_BLOCK_BYTES", budget_rows * row_bytes)
  got = lc._depthwise_kernel_grad(jnp.asarray(xp, jnp.float32), jnp.asarray(g, jnp.float32),
                                  window, jnp.float32)
  want = [np.sum(xp[(slice(None),) + tuple(slice(o, o + s) for o, s in zip(off, shape[1:-1]))]
                 * g, axis=tuple(range(n + 1)))
          for off in np.ndindex(*window)]
  np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window,reductions", [((7, 7), 4), ((5, 5), 2), ((3, 3), 1),
                                                ((3, 2, 3), 2), ((5,), 1)])
def test_per_tap_sums_reduce_whole_kernel_rows_of_at_most_16_taps(window, reductions):
  # 7x7: rows 2+2+2+1 (14, 14, 14, 7 taps); 5x5: 3+2 rows; 3x3 and 1-D: one reduction.
  shape = (1,) + tuple(4 for _ in window) + (3,)
  xp = jnp.ones((1,) + tuple(4 + k - 1 for k in window) + (3,))
  jaxpr = jax.make_jaxpr(lambda xp, g: lc._per_tap_sums(xp, g, window, jnp.float32))(
      xp, jnp.ones(shape))
  prims = [e.primitive.name for e in jaxpr.jaxpr.eqns]
  assert prims.count("reduce") == reductions, prims


def test_depthwise_kernel_gradient_of_bfloat16_accumulates_in_float32():
  """bfloat16 x and g: the tap products and sums are in the accumulation dtype (float32), so
  the result matches float64 sums of the same bfloat16 values to float32 precision (products
  rounded to bfloat16 would be off by ~1e-2 relative)."""
  rng = np.random.default_rng(6)
  xp = jnp.asarray(rng.standard_normal((2, 14, 12, 6)), jnp.bfloat16)
  g = jnp.asarray(rng.standard_normal((2, 8, 6, 6)), jnp.bfloat16)
  got = lc._depthwise_kernel_grad(xp, g, (7, 7), jnp.float32)
  assert got.dtype == jnp.float32
  x64, g64 = np.asarray(xp, np.float64), np.asarray(g, np.float64)
  want = [np.sum(x64[:, i:i + 8, j:j + 6] * g64, axis=(0, 1, 2)) for i, j in np.ndindex(7, 7)]
  np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_loop_fusion_boundary_changes_no_value(dtype):
  x = jnp.asarray(np.random.default_rng(7).standard_normal(1000) * 1e3, dtype)
  x = jnp.concatenate([x, jnp.asarray([0.0, -0.0, np.inf, -np.inf], dtype),
                       jnp.asarray([jnp.finfo(dtype).tiny, jnp.finfo(dtype).max], dtype)])
  got = jax.jit(lc._loop_fusion_boundary)(x)
  assert got.dtype == x.dtype
  np.testing.assert_array_equal(np.asarray(got, np.float64), np.asarray(x, np.float64))
  g = jnp.asarray(np.random.default_rng(8).standard_normal(x.shape), dtype)
  _, vjp = jax.vjp(lc._loop_fusion_boundary, x)
  assert jnp.array_equal(vjp(g)[0], g)
  assert jnp.array_equal(jax.jvp(lc._loop_fusion_boundary, (x,), (g,))[1], g)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_compute_once_changes_no_finite_value(dtype):
  x = jnp.asarray(np.random.default_rng(9).standard_normal(1000) * 1e3, dtype)
  x = jnp.concatenate([x, jnp.asarray([0.0, -0.0], dtype),
                       jnp.asarray([jnp.finfo(dtype).tiny, jnp.finfo(dtype).max], dtype)])
  got = jax.jit(lc._compute_once)(x)
  assert got.dtype == x.dtype
  np.testing.assert_array_equal(np.asarray(got, np.float64), np.asarray(x, np.float64))
  assert jnp.array_equal(jnp.signbit(got), jnp.signbit(x))  # -0.0 stays -0.0
  g = jnp.asarray(np.random.default_rng(10).standard_normal(x.shape), dtype)
  _, vjp = jax.vjp(lc._compute_once, x)
  assert jnp.array_equal(vjp(g)[0], g)
  assert jnp.array_equal(jax.jvp(lc._compute_once, (x,), (g,))[1], g)
  assert lc.compute_once(x, impl="xla") is x


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU fusion decision")
def test_compute_once_stores_a_depthwise_sum_that_a_layer_norm_would_recompute():
  """A 7x7 depthwise sum, then a LayerNorm, differentiated (RDNet's mixer at 14x14): XLA
  fuses the 49-tap sum into the LN's forward and backward loops (several loops holding all
  49 taps); after `compute_once`, one forward loop holds them (and one for the input
  gradient). Compiled, never run."""
  x = jnp.ones((4, 14, 14, 256))
  w = jnp.ones((7, 7, 1, 256))
  ln = nn.LayerNorm()
  ln_vars = ln.init(jax.random.key(0), x)

  def loops_with_all_taps(once):
    def loss(x, w, v):
      y = lc.depthwise_shifted(x, w, (1, 1), None, ((3, 3), (3, 3)))
      y = lc.compute_once(y, impl="fast") if once else y
      y = lc.loop_fusion_boundary(y, impl="fast")
      return jnp.sum(jnp.tanh(ln.apply(v, y)))
    text = compiler.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, w, ln_vars).compile(
        ).as_text()
    # A loop of all 49 taps slices the input 49 times and the kernel ~48 (a bitcast or two).
    return sum(b.count(" slice(") >= 90 for b in re.split(r"\n(?=%|ENTRY)", text))

  duplicated = loops_with_all_taps(False)
  if duplicated <= 2:
    pytest.skip("this XLA no longer recomputes the depthwise sum in the LN's loops: "
                "re-measure bench_models --variants dw-recomputed and drop compute_once")
  assert loops_with_all_taps(True) == 2


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU fusion decision")
def test_depthwise_sum_before_a_channel_reduction_stores_no_tap_slices(monkeypatch):
  """RDNet's 7x7 depthwise, `loop_fusion_boundary`, then a LayerNorm-like reduction: the
  shifted sum stays one XLA loop fusion (no stored slice of the padded input per tap).
  Compiled, never run; at RDNet-T's first stage (the fusion pass keeps smaller sums, e.g.
  2x28x28x64, as loops)."""
  x, w, b = jnp.ones((2, 56, 56, 192)), jnp.ones((7, 7, 1, 192)), jnp.ones(192)

  def hlo():
    def f(x, w, b):  # a new function per call: jit caches traces by function
      y = lc.depthwise_shifted(jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0))), w, (1, 1),
                               None) + b
      y = lc.loop_fusion_boundary(y, impl="fast")
      return y - y.mean(-1, keepdims=True)
    return jax.jit(f).lower(x, w, b).compile().as_text()

  assert "slice_fusion" not in hlo()
  monkeypatch.setattr(lc, "_loop_fusion_boundary", lambda y: y)
  if "slice_fusion" not in hlo():
    pytest.skip("this XLA no longer stores the tap slices without the boundary: re-measure "
                "bench_models --variants dw-ynn-fusion and drop _loop_fusion_boundary")


STRIDE1_DN = {1: ("NHC", "HIO", "NHC"), 2: DN, 3: ("NDHWC", "DHWIO", "NDHWC")}

STRIDE1_CASES = [  # x shape, kernel shape, pads, dimension numbers
    ((3, 11, 5), (4, 5, 6), ((2, 1),), ("NHC", "HIO", "NHC")),
    ((2, 3, 5, 4, 4), (3, 2, 3, 4, 2), ((1, 1), (0, 1), (2, 0)), ("NDHWC", "DHWIO", "NDHWC")),
    ((1, 3, 4, 6), (5, 5, 6, 3), ((2, 2), (2, 2)), DN),  # kernel > input, one image
]  # the 3-D and 2-D cases have F <= C / 2: their forward pass is the tap sum


@pytest.mark.parametrize("case", STRIDE1_CASES, ids=["1-D", "3-D", "kernel > input"])
def test_stride1_vjp_scan_over_images_1d_3d_dtypes_and_second_order(monkeypatch, case):
  """The dense stride-1 VJP with its scan over single images (one chunk without a scan for a
  batch of one), values and gradients against the float64 convolution; for 1-D also
  bfloat16 and grad of grad against the convolution."""
  monkeypatch.setattr(lc, "_TAP_CHUNK_BYTES", 1)
  xs, ws, pads, dn = case
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
  w = jnp.asarray(rng.standard_normal(ws), jnp.float32)
  ones = (1,) * (x.ndim - 2)

  def f(x, w, impl):
    return lc.conv_general_dilated(x, w, ones, pads, dimension_numbers=dn, impl=impl)

  def loss(x, w, impl):
    return jnp.sum(jnp.sin(f(x, w, impl)))

  jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(x, w, "fast"))
  assert "custom_vjp_call" in jaxpr and ("scan" in jaxpr) == (xs[0] > 1)
  with jax.enable_x64(True):
    x64, w64 = x.astype(jnp.float64), w.astype(jnp.float64)
    ref = jax.grad(loss, argnums=(0, 1))(x64, w64, "xla")
    np.testing.assert_allclose(f(x, w, "fast"), f(x64, w64, "xla"), rtol=1e-5, atol=1e-5)
  got = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(x, w, "fast")
  for a, b in zip(got, ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  if x.ndim != 3:
    return
  # Per-example kernel gradients (vmap of grad, as gradient-noise measurements take them).
  per_example = lambda impl: jax.vmap(
      lambda xi: jax.grad(loss, argnums=1)(xi[None], w, impl))(x)
  np.testing.assert_allclose(per_example("fast"), per_example("xla"), rtol=1e-4, atol=1e-4)

  def grad_norm(x, w, impl):  # a gradient penalty: reverse over reverse
    gx, gw = jax.grad(loss, argnums=(0, 1))(x, w, impl)
    return jnp.sum(gx * gx) + jnp.sum(gw * gw)

  second = jax.jit(jax.grad(grad_norm, argnums=(0, 1)), static_argnums=2)
  for a, b in zip(second(x, w, "fast"), second(x, w, "xla")):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
  gx, gw, gx32, gw32 = _bfloat16_fast_and_float32_xla_grads(f, x, w)
  scale = max(float(jnp.max(jnp.abs(gx32))), float(jnp.max(jnp.abs(gw32))))
  np.testing.assert_allclose(gx.astype(jnp.float32), gx32, atol=2e-2 * scale)
  np.testing.assert_allclose(gw.astype(jnp.float32), gw32, atol=2e-2 * scale)


@pytest.mark.parametrize("x_shape,w_shape,pads", [
    ((2, 6, 5, 8), (3, 3, 8, 3), ((1, 1), (1, 1))),
    ((2, 5, 6, 6), (3, 2, 6, 2), ((0, 2), (1, 0))),
    ((1, 2, 3, 4), (5, 3, 4, 2), ((4, 0), (0, 2))),   # taps that meet no input position
    ((3, 11, 5), (4, 5, 2), ((2, 1),)),
    ((2, 3, 4, 5, 4), (3, 2, 3, 4, 2), ((1, 1), (0, 1), (2, 0))),
])
def test_region_sums_equal_padded_terms_and_float64(monkeypatch, x_shape, w_shape, pads):
  """`_shifted_sum` region by region (plain slices) and with each tap's term padded (the
  padded-tap-sums variant): the same values as a float64 convolution."""
  rng = np.random.default_rng(4)
  x = rng.standard_normal(x_shape).astype(np.float32)
  w = rng.standard_normal(w_shape).astype(np.float32)
  n = x.ndim - 2
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, STRIDE1_DN[n])
  with jax.enable_x64(True):
    ref = jax.lax.conv_general_dilated(jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64),
                                       (1,) * n, pads, dimension_numbers=dn)
  regions = lc._tap_sum(jnp.asarray(x), jnp.asarray(w), pads, None, None)
  monkeypatch.setattr(lc, "_REGION_SUMS", False)
  padded = lc._tap_sum(jnp.asarray(x), jnp.asarray(w), pads, None, None)
  np.testing.assert_allclose(regions, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(padded, regions, rtol=1e-6, atol=1e-6)


def test_chunk_size_is_the_largest_divisor_within_budget(monkeypatch):
  monkeypatch.setattr(lc, "_TAP_CHUNK_BYTES", 100)
  assert lc._chunk_size(8, 30) == 2  # 3 does not divide 8, 4 * 30 > 100
  assert lc._chunk_size(12, 25) == 4
  assert lc._chunk_size(7, 30) == 1
  assert lc._chunk_size(5, 1000) == 1  # one image over the budget: still one at a time
  assert lc._chunk_size(6, 10) == 6
  assert lc._chunk_size(8, 10, max_chunk=4) == 4  # scan_batch_chunks: at least two chunks


@pytest.mark.parametrize("last_dtype", [jnp.float32, jnp.int32])
def test_scan_batch_chunks_late_outputs_equal_lax_scan(monkeypatch, last_dtype):
  """The chunk loop whose outputs are created from its last operand gives lax.scan's carry
  and outputs exactly (outputs of two dtypes, an integer last operand too)."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((6, 5, 3)), jnp.float32)
  last = jnp.asarray(rng.integers(-3, 4, (6, 5, 3))).astype(last_dtype)

  def fn(c, xc, lc_):
    y = jnp.sin(xc) * lc_
    return c + y.sum(axis=0), (y.astype(jnp.bfloat16), (xc * 2).sum(axis=-1))

  monkeypatch.setattr(lc, "_TAP_CHUNK_BYTES", 2 * 5 * 3 * 4)  # 3 chunks of 2 images
  run = jax.jit(lambda x, l: lc.scan_batch_chunks(fn, jnp.zeros((5, 3)), (x, l), 5 * 3 * 4))
  late = run(x, last)
  carried = lambda: "dynamic_update_slice" in str(jax.make_jaxpr(run)(x, last))
  assert carried()  # the outputs are loop state written chunk by chunk
  monkeypatch.setattr(lc, "_OUTPUTS_AFTER_OPERANDS", False)
  jax.clear_caches()
  scanned = run(x, last)
  assert not carried()
  assert late[1][0].shape == (6, 5, 3) and late[1][1].shape == (6, 5)
  for a, b in zip(jax.tree_util.tree_leaves(late), jax.tree_util.tree_leaves(scanned)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
