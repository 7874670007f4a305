"""`lax.conv_general_dilated` with faster formulations of four common cases on XLA:CPU.

XLA:CPU runs every convolution through its generic (Eigen) convolution, whose backward
passes are slow. Four cases have an exact, cheaper formulation as matmuls or fused
elementwise loops, measured on 2 cores (tools/bench_conv.py, BENCHMARKS.md "Convolutions
on CPU"):

- pointwise (1x1 kernel, any stride, no dilation, one group): strided slice + `dot_general`.
  The backward pass of the 1x1 convolutions of DenseNet-121, ResNet-50 and DenseNet-BC runs
  3.8-6.1x faster than the convolution's, since the kernel gradient becomes one matmul.
- patchify (kernel = stride, one group): a reshape of non-overlapping patches + one matmul
  (RDNet's stem and transitions).
- depthwise (one input channel per group, channel multiplier 1): K*K shifted
  multiply-adds accumulated in float32, which XLA fuses into one loop (XLA:CPU's grouped
  convolution is a slow generic loop: 11-39x slower forward for MobileNetV2's and RDNet's
  layers).
- dense stride-1 (one group, e.g. DenseNet's and ResNet's 3x3): the convolution forward,
  a custom VJP backward whose kernel and input gradients are two matmuls over a
  tap-replicated cotangent, a few images at a time (`conv_stride1`; backward 1.5-2.2x
  faster at 32x32-56x56, 1.0-1.1x at 14x14 and 7x7, for DenseNet's and ResNet-50's 3x3s).

Everything else, and every backend other than CPU under `impl="auto"`, goes to
`lax.conv_general_dilated` unchanged: GPUs/TPUs have fast convolutions for all four.
Values equal the convolution's up to float32 summation order (tests/layers/test_conv.py,
against float64).

Use it as `nn.Conv(..., conv_general_dilated=jaxdl.layers.conv_general_dilated)`
(`jaxdl.layers.Conv` is that partial): parameters keep `nn.Conv`'s names and layout, so
checkpoints and converted timm weights do not depend on the implementation.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdl import errors
from jaxdl.layers.remat import opaque_zero

IMPLS = ("auto", "xla", "fast")
_default_impl = ["auto"]


def _check_impl(impl):
  if impl not in IMPLS:
    raise errors.ConfigError(f"conv impl must be one of {IMPLS}, got {impl!r}.")


def _use_fast(impl: str | None) -> bool:
  """Whether `impl` (None: the `conv_impl` context's) selects the CPU formulations here."""
  impl = _default_impl[-1] if impl is None else impl
  _check_impl(impl)
  return impl == "fast" or (impl == "auto" and jax.default_backend() == "cpu")


def uses_cpu_formulations(impl: str | None = None) -> bool:
  """Whether code traced now (or with `impl`) takes jaxdl's CPU formulations (`conv_impl`)."""
  return _use_fast(impl)


@contextlib.contextmanager
def conv_impl(impl: str):
  """Within the block, `conv_general_dilated(impl=None)` traces with `impl`.

  It also governs `jaxdl.layers.dense.dot_general` (dense contractions as 2-D matmuls).

  "auto": the fast formulations on CPU, the convolution elsewhere; "xla": always the
  convolution; "fast": the fast formulations on every backend. Read at trace time, so wrap
  the first call of a jitted function (benchmarks compare implementations this way).
  """
  _check_impl(impl)
  _default_impl.append(impl)
  try:
    yield
  finally:
    _default_impl.pop()


def _channels_last(lhs_ndim, dn: lax.ConvDimensionNumbers) -> bool:
  n = lhs_ndim - 2
  spatial = tuple(range(1, n + 1))
  return (dn.lhs_spec == (0, n + 1) + spatial and dn.out_spec == (0, n + 1) + spatial
          and dn.rhs_spec == (n + 1, n) + tuple(range(n)))


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None, *,
                         impl: str | None = None):
  """`lax.conv_general_dilated`'s signature and result (see the module docstring).

  The fast formulations apply to channels-last layouts (NHWC / HWIO and their 1-D and
  3-D analogues) without dilation; any other call is passed to the convolution.
  """
  conv = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
  if not _use_fast(impl):
    return conv()
  n = lhs.ndim - 2
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if (n < 1 or batch_group_count != 1 or not _channels_last(lhs.ndim, dn)
      or any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ()))):
    return conv()
  window = rhs.shape[:n]
  strides = tuple(window_strides)
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(lhs.shape[1:n + 1], window, strides, padding)
  else:
    pads = tuple(tuple(p) for p in padding)
  c_in, c_out = lhs.shape[-1], rhs.shape[-1]
  if feature_group_count == 1 and all(w == s for w, s in zip(window, strides)):
    x = _pad(lhs, pads)
    return _patch_matmul(x, rhs, window, precision, preferred_element_type)
  if feature_group_count == c_in and rhs.shape[n] == 1 and c_out == c_in:
    return depthwise_shifted(lhs, rhs, strides, preferred_element_type, pads)
  if feature_group_count == 1 and all(w == 1 for w in window):
    x = _pad(lhs, pads)
    x = x[(slice(None),) + tuple(slice(None, None, s) for s in strides)]
    return _patch_matmul(x, rhs, window, precision, preferred_element_type)
  if (feature_group_count == 1 and all(s == 1 for s in strides)
      and all(lo >= 0 and hi >= 0 for lo, hi in pads)):
    return conv_stride1(lhs, rhs, pads, dn, precision, preferred_element_type)
  return conv()


def _pad(x, pads):
  if all(p == (0, 0) for p in pads):
    return x
  return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in pads)
                 + ((0, 0, 0),))


def _output_sizes(x, window, strides):
  """Output spatial sizes of a 'VALID' window over padded x [N, *S, C]."""
  spatial = x.shape[1:-1]
  sizes = tuple((s - k) // st + 1 for s, k, st in zip(spatial, window, strides))
  if any(s < k for s, k in zip(spatial, window)):
    raise errors.ShapeError(f"convolution window {window} is larger than the padded input "
                            f"{spatial}: use a smaller kernel or more padding.")
  return sizes


def _patch_matmul(x, rhs, window, precision, preferred_element_type):
  """Non-overlapping windows (stride = window) of padded x [N, *S, C] times rhs [*window, C, O]."""
  n = x.ndim - 2
  out_sizes = _output_sizes(x, window, window)
  if any(w != 1 for w in window):
    x = x[(slice(None),) + tuple(slice(0, o * w) for o, w in zip(out_sizes, window))]
    split = (x.shape[0],) + tuple(d for o, w in zip(out_sizes, window) for d in (o, w))
    x = x.reshape(split + (x.shape[-1],))
    # [N, o1, w1, o2, w2, ..., C] -> [N, o1, o2, ..., w1, w2, ..., C]
    perm = (0,) + tuple(1 + 2 * i for i in range(n)) + tuple(2 + 2 * i for i in range(n))
    x = x.transpose(perm + (2 * n + 1,))
    x = x.reshape((x.shape[0],) + out_sizes + (-1,))
  return matmul_2d(x, rhs.reshape((-1, rhs.shape[-1])), 1, precision, preferred_element_type)


def matmul_2d(lhs, rhs, num_contract: int = 1, precision=None,
              preferred_element_type=None):
  """lhs [*A, *K] times rhs [*K, *F] over the `num_contract` axes K, as one 2-D matmul.

  With A as several axes, the kernel gradient (a contraction over all of A) is canonicalized
  on XLA:CPU with a transpose of the cotangent that fuses into its producer as a strided
  write; as [prod A, prod K] x [prod K, prod F] both gradients are plain matmuls (1.5-3.3x
  faster backward, BENCHMARKS.md "Dense contractions on CPU").
  """
  a_shape = lhs.shape[:lhs.ndim - num_contract]
  k = math.prod(lhs.shape[lhs.ndim - num_contract:])
  f_shape = rhs.shape[num_contract:]
  out = lax.dot_general(lhs.reshape((math.prod(a_shape), k)),
                        rhs.reshape((k, math.prod(f_shape))), (((1,), (0,)), ((), ())),
                        precision=precision, preferred_element_type=preferred_element_type)
  return out.reshape(a_shape + f_shape)


# Bytes per chunk of images in `scan_batch_chunks` (the backward passes of `conv_stride1`,
# its tap-replicated cotangent, of the stride-1 depthwise VJP and of
# `jaxdl.layers.pool.max_pool`): small enough that a chunk and its operands stay in the
# last-level cache between the ops that read it (BENCHMARKS.md "Dense KxK convolution
# gradients on CPU").
_TAP_CHUNK_BYTES = 8 * 2**20


def conv_stride1(x, rhs, pads, dn, precision=None, preferred_element_type=None):
  """Stride-1, one-group convolution of x [N, *S, C] with rhs [*K, C, F]: custom VJP on CPU.

  The forward pass is `lax.conv_general_dilated`, or `_tap_sum` when F <= C / 2. The
  backward pass replaces XLA:CPU's convolution gradients (its kernel gradient runs at ~20
  GFLOP/s on 2 cores, a quarter of its forward) by two matmuls per chunk of images over the
  tap-replicated cotangent G[n, q, k, f] = g[n, q + lo - k, f] (q a position of the input,
  k a kernel tap, lo the low padding):

    kernel gradient  dW[k, c, f] = sum_{n, q} x[n, q, c] G[n, q, k, f]
    input gradient   dx[n, q, c] = sum_{k, f} G[n, q, k, f] W[k, c, f]

  G is K*K times the cotangent, so it is built and consumed a few images at a time (a scan
  over chunks of at most `_TAP_CHUNK_BYTES`) to stay in cache. It pays off when the output
  has no more channels than the input (DenseNet's 3x3 C -> k, ResNet's C -> C); values
  equal the convolution's gradients up to float32 summation order. As with the depthwise
  VJP, forward-mode autodiff through it raises; trace under `conv_impl("xla")` for that.
  """
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  return _conv_s1_vjp(x, rhs, pads, dn, precision, preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_s1_vjp(x, rhs, pads, dn, precision, preferred_element_type):
  n = x.ndim - 2
  if 2 * rhs.shape[n + 1] <= rhs.shape[n]:
    return _tap_sum(x, rhs, pads, precision, preferred_element_type)
  return lax.conv_general_dilated(x, rhs, (1,) * n, pads, dimension_numbers=dn,
                                  precision=precision,
                                  preferred_element_type=preferred_element_type)


def _tap_sum(x, rhs, pads, precision, preferred_element_type):
  """Stride-1 convolution as one matmul to all taps' outputs, then their shifted sum.

  Y[n, q, k, f] = sum_c x[n, q, c] W[k, c, f] ([N*S, C] x [C, K*F]: one large matmul), and
  out[n, o, f] = sum_k Y[n, o + k - lo, k, f], one fused loop. Y has K*F channels, so this
  pays off when F is well below C (DenseNet's 3x3 4k -> k: 1.4-1.5x faster than XLA:CPU's
  convolution forward; with F = C it is slower, BENCHMARKS.md).
  """
  n = x.ndim - 2
  window, c, f = rhs.shape[:n], rhs.shape[n], rhs.shape[n + 1]
  taps = math.prod(window)
  out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(x, rhs))
  acc = jnp.promote_types(out_dtype, jnp.float32)
  wall = jnp.moveaxis(rhs.reshape(taps, c, f), 1, 0).reshape(c, taps * f)
  y = lax.dot_general(x.reshape(-1, c), wall, (((1,), (0,)), ((), ())), precision=precision,
                      preferred_element_type=acc)
  y = y.reshape(x.shape[:-1] + (taps, f))

  def tap(offset, slices):
    t = int(np.ravel_multi_index(offset, window))  # the tap's index in window order
    return y[(slice(None),) + slices + (t, slice(None))]
  zeros = lambda sizes: jnp.zeros((x.shape[0],) + sizes + (f,), acc)
  return _shifted_sum(tap, x.shape[1:-1], window, pads, zeros).astype(out_dtype)


# Whether `_shifted_sum` sums plain slices region by region; False: each tap's term padded to
# the output (tools/bench_models.py --variants padded-tap-sums).
_REGION_SUMS = True


def _tap_regions(size: int, out: int, k: int, lo: int):
  """[(a, b, taps)]: the output positions [a, b) along one axis, in order, over which the set
  of kernel taps t whose input position o + t - lo lies in [0, size) is the same."""
  cuts = {0, out} | {min(max(c, 0), out) for t in range(k) for c in (lo - t, size + lo - t)}
  cuts = sorted(cuts)
  return [(a, b, [t for t in range(k) if lo - t <= a and b <= size + lo - t])
          for a, b in zip(cuts, cuts[1:]) if b > a]


def _shifted_sum(term, in_sizes, window, pads, zeros):
  """out[o] = sum over kernel taps k of term(k, ...)[o], the terms at input position o + k - lo
  (zero where that lies in the padding): a stride-1 correlation's shifted sum.

  term(k, slices) gives tap k's contribution over the input positions `slices` (a slice per
  spatial axis); zeros(sizes) an all-zero block. The output is split, per axis, into regions
  over which the same taps are inside the input (`_tap_regions`: for a 3x3 'same' kernel,
  the first row / column, the interior and the last); each region sums plain slices, and the
  regions are concatenated. Padding each tap's term instead makes XLA:CPU check the bounds of
  every term at every position (DenseNet-121's 3x3 tap sum at 56x56: 6.5x slower).
  """
  n = len(window)
  out_sizes = tuple(s + lo + hi - k + 1 for s, (lo, hi), k in zip(in_sizes, pads, window))
  if not _REGION_SUMS:  # each tap's term padded to the output
    out = zeros(out_sizes)
    for offset in itertools.product(*(range(k) for k in window)):
      # Tap t meets the input positions [i0, i1), the outputs [i0 - t + lo, i1 - t + lo).
      spans = [(max(0, t - lo), min(s, o + t - lo), t - lo)
               for s, o, t, (lo, _) in zip(in_sizes, out_sizes, offset, pads)]
      if any(i1 <= i0 for i0, i1, _ in spans):
        continue
      y = term(offset, tuple(slice(i0, i1) for i0, i1, _ in spans))
      widths = ([(0, 0, 0)] + [(i0 - d, o - (i1 - d), 0)
                               for (i0, i1, d), o in zip(spans, out_sizes)]
                + [(0, 0, 0)] * (y.ndim - n - 1))
      out = out + lax.pad(y, jnp.zeros((), y.dtype), widths)
    return out
  axes = [_tap_regions(s, o, k, lo)
          for s, o, k, (lo, _) in zip(in_sizes, out_sizes, window, pads)]

  def block(parts):
    acc = None
    for offset in itertools.product(*(taps for _, _, taps in parts)):
      slices = tuple(slice(a + t - lo, b + t - lo)
                     for (a, b, _), t, (lo, _) in zip(parts, offset, pads))
      y = term(offset, slices)
      acc = y if acc is None else acc + y
    return zeros(tuple(b - a for a, b, _ in parts)) if acc is None else acc

  def build(parts):
    if len(parts) == n:
      return block(parts)
    pieces = [build(parts + [region]) for region in axes[len(parts)]]
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=1 + len(parts))
  return build([])


def _conv_s1_fwd(x, rhs, pads, dn, precision, preferred_element_type):
  return _conv_s1_vjp(x, rhs, pads, dn, precision, preferred_element_type), (x, rhs)


def _replicate_taps(g, window, pads):
  """g [N, *O, F] -> G [N, *S, *K, F], G[n, q, k, f] = g[n, q + lo - k, f] (0 outside g).

  q runs over the unpadded input positions (S = O + K - 1 - lo - hi): the padded ones meet
  only zeros of x in the kernel gradient and are cropped from the input gradient.
  """
  n = g.ndim - 2
  zero = jnp.zeros((), g.dtype)
  for axis in reversed(range(n)):
    k, (lo, hi) = window[axis], pads[axis]
    widths = [(0, 0, 0)] * g.ndim
    terms = []
    for t in range(k):
      widths[1 + axis] = (t - lo, k - 1 - t - hi, 0)
      terms.append(lax.pad(g, zero, widths))
    g = jnp.stack(terms, axis=n + 1)
  return g


def scan_batch_chunks(fn, carry, xs, per_image_bytes: int):
  """`carry, y = fn(carry, *chunks)` over chunks of the batch (leading) axis of the arrays xs.

  Chunks hold as many images as fit `_TAP_CHUNK_BYTES` of `per_image_bytes` each, and there
  are at least two when the batch has two images: a loop whose operands XLA materializes.
  Outside a loop, XLA:CPU fuses the producer of a cotangent into a consumer that reads it
  once per kernel tap and recomputes it each time (in a DenseNet, the sum of the later
  layers' BatchNorm-backward slices: +0.5 s per DenseNet-121 step);
  `lax.optimization_barrier` does not survive its pipeline. Returns the final carry and the
  chunks' y concatenated back along the batch axis.

  Put the operand computed last (in a backward pass, the cotangent) at the end of xs: the
  loop's output buffers are created from it (`_OUTPUTS_AFTER_OPERANDS`).
  """
  batch = xs[0].shape[0]
  chunk = _chunk_size(batch, per_image_bytes, max_chunk=max(1, batch // 2))
  if chunk == batch:
    return fn(carry, *xs)
  n = batch // chunk
  parts = tuple(a.reshape((n, chunk) + a.shape[1:]) for a in xs)
  if _OUTPUTS_AFTER_OPERANDS:
    carry, ys = _loop_with_late_outputs(fn, carry, parts, xs[-1])
  else:
    carry, ys = lax.scan(lambda c, xc: fn(c, *xc), carry, parts)
  return carry, jax.tree.map(lambda y: y.reshape((batch,) + y.shape[2:]), ys)


# Whether `scan_batch_chunks` creates its stacked outputs from its last operand instead of
# leaving them to `lax.scan`. A scan's output buffers start as a broadcast constant that
# XLA:CPU's scheduler is free to copy into place at any time, and it did so at the start of
# the step: in a DenseNet-BC-100 training step at batch 64 the 48 dense layers' 3x3
# input-gradient buffers (252 MiB, 192 in block 1) were live through the whole forward pass
# (tools/bench_memory.py, BENCHMARKS.md "Memory-efficient DenseNet").
_OUTPUTS_AFTER_OPERANDS = True


def _loop_with_late_outputs(fn, carry, parts, last):
  """`lax.scan(fn, carry, parts)` whose stacked outputs start as a broadcast of
  `remat.opaque_zero(last)`: not a constant, so they are allocated only once `last` exists
  (every chunk overwrites its slice, so their initial values never matter)."""
  n = parts[0].shape[0]
  _, y_shapes = jax.eval_shape(fn, carry, *(p[0] for p in parts))
  zero = opaque_zero(last)
  ys = jax.tree.map(lambda s: jnp.broadcast_to(zero.astype(s.dtype), (n,) + s.shape),
                    y_shapes)

  def body(i, state):
    c, ys = state
    c, y = fn(c, *(lax.dynamic_index_in_dim(p, i, keepdims=False) for p in parts))
    return c, jax.tree.map(lambda b, v: lax.dynamic_update_index_in_dim(b, v, i, 0), ys, y)

  return lax.fori_loop(0, n, body, (carry, ys))


def _chunk_size(batch: int, per_image_bytes: int, max_chunk: int | None = None,
                budget: int | None = None) -> int:
  """The largest divisor of `batch` (<= max_chunk) whose chunk fits `budget` bytes (None:
  `_TAP_CHUNK_BYTES`), at least 1."""
  budget = _TAP_CHUNK_BYTES if budget is None else budget
  fits = [d for d in range(1, (max_chunk or batch) + 1)
          if batch % d == 0 and d * per_image_bytes <= budget]
  return max(fits, default=1)


def _conv_s1_bwd(pads, dn, precision, preferred_element_type, res, g):
  del dn, preferred_element_type
  x, rhs = res
  n = x.ndim - 2
  window, c, f = rhs.shape[:n], rhs.shape[n], rhs.shape[n + 1]
  taps = math.prod(window)
  dtype = jnp.result_type(x, rhs, g)
  acc = jnp.promote_types(dtype, jnp.float32)
  g = g.astype(dtype)
  wm = jnp.swapaxes(rhs.reshape(taps, c, f), 1, 2).reshape(taps * f, c).astype(dtype)
  per_image = math.prod(x.shape[1:-1]) * taps * f * jnp.dtype(dtype).itemsize

  def one_chunk(dw, xc, gc):
    gt = _replicate_taps(gc, window, pads).reshape(-1, taps * f)
    dw = dw + lax.dot_general(xc.astype(dtype).reshape(-1, c), gt, (((0,), (0,)), ((), ())),
                              precision=precision, preferred_element_type=acc)
    dx = lax.dot_general(gt, wm, (((1,), (0,)), ((), ())), precision=precision,
                         preferred_element_type=acc)
    return dw, dx.reshape(xc.shape).astype(x.dtype)

  dw, dx = scan_batch_chunks(one_chunk, jnp.zeros((c, taps * f), acc), (x, g), per_image)
  drhs = jnp.moveaxis(dw.reshape(c, taps, f), 0, 1).reshape(rhs.shape).astype(rhs.dtype)
  return dx, drhs


_conv_s1_vjp.defvjp(_conv_s1_fwd, _conv_s1_bwd)


def depthwise_shifted(x, rhs, strides, preferred_element_type, pads=None):
  """Depthwise convolution of x [N, *S, C], padded by `pads` (None: none), with rhs
  [*K, 1, C] as shifted products.

  At stride 1 it has a custom VJP: the input gradient is itself a shifted-sum depthwise
  correlation of the padded cotangent with the flipped kernel, one fused loop. Autodiff of
  the K*K shifted products instead gives K*K padded full-size terms and full-size broadcasts
  of each kernel tap (RDNet-T's training step: 1.45x faster with the custom VJP, compile
  186 s -> 105 s; BENCHMARKS.md); the backward pass runs over chunks of images
  (`scan_batch_chunks`: rdnet_tiny's step 1.27x faster than over the whole batch), and the
  kernel gradient over blocks of rows of one image (`_depthwise_kernel_grad`). The padding
  is inside the VJP, so the input gradient is computed at the unpadded positions only, not
  over the padded input to be cropped (a 7x7 'same' layer: 1.23x fewer positions at 56x56,
  3.4x at 7x7; BENCHMARKS.md "Training-step elementwise work on CPU"). Strided
  layers keep autodiff: there the same correlation would run over the stride-dilated
  cotangent, mostly zeros (2.3x slower for MobileNetV2's 3x3/2 layer). A custom VJP rules
  out forward-mode autodiff (`jax.jvp`, `jax.hessian`) through the stride-1 layers on CPU;
  trace under `conv_impl("xla")` for those.
  """
  n = x.ndim - 2
  window = rhs.shape[:n]
  pads = ((0, 0),) * n if pads is None else tuple((int(lo), int(hi)) for lo, hi in pads)
  out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(x, rhs))
  if not all(s == 1 for s in strides):
    return _depthwise_sum(_pad(x, pads), rhs, tuple(strides), out_dtype)
  if _DW_UNPADDED_DX and all(0 <= p < k for k, pad in zip(window, pads) for p in pad):
    return _depthwise_vjp(x, rhs, pads, out_dtype)
  return _depthwise_vjp(_pad(x, pads), rhs, ((0, 0),) * n, out_dtype)


# Whether the stride-1 depthwise VJP pads inside (input gradient at the unpadded positions);
# False: it takes the padded input, whose gradient is cropped (tools/bench_models.py
# --variants dw-padded-dx).
_DW_UNPADDED_DX = True


def _shifted_terms(x, window, strides, out_sizes):
  """Yields (window offset, the strided slice of x [N, *S, C] that meets that tap)."""
  for offset in itertools.product(*(range(k) for k in window)):
    sl = (slice(None),) + tuple(slice(o, o + st * (size - 1) + 1, st)
                                for o, st, size in zip(offset, strides, out_sizes))
    yield offset, x[sl]


def _depthwise_sum(x, rhs, strides, out_dtype):
  out_sizes = _output_sizes(x, rhs.shape[:x.ndim - 2], strides)
  acc_dtype = jnp.promote_types(out_dtype, jnp.float32)
  out = None
  for offset, xs in _shifted_terms(x, rhs.shape[:x.ndim - 2], strides, out_sizes):
    term = (xs * rhs[offset + (0,)]).astype(acc_dtype)
    out = term if out is None else out + term
  return out.astype(out_dtype)


def loop_fusion_boundary(y, impl: str | None = None):
  """y itself; on CPU (`impl` as in `conv_impl`) through an op that XLA:CPU's YNNPACK fusion
  pass does not take: the ops on either side of it are fused apart.

  Two uses in RDNet's FeatureMixer. (1) After a LayerNorm, before a 1x1 convolution: a
  YNNPACK reduction fusion (`jaxdl.compiler`) otherwise takes in the LN's sums, its
  normalization and the dot that follows, and YNNPACK's dot is slower than XLA's own
  ([50176, 192] x [192, 768]: 76 vs ~110 GFLOP/s; rdnet_tiny inference 1.16x faster with the
  boundary). (2) After a depthwise shifted sum, so that it stays one XLA loop fusion.
  When a channel reduction follows a depthwise shifted sum (RDNet's LayerNorm after its 7x7
  depthwise), XLA:CPU puts the sum of the K*K shifted products into a YNNPACK fusion with
  that reduction, and YNNPACK does not fuse slices: each tap's slice of the padded input is
  stored, then read back (7x7 at 56x56x192, batch 8: 152 ms instead of 15). Not for every
  depthwise layer: before a BatchNorm's reductions over positions XLA:CPU keeps the slices
  fused, and the boundary costs a pass (MobileNetV2: 0.85x). BENCHMARKS.md "Depthwise
  forward before a LayerNorm".
  """
  return _loop_fusion_boundary(y) if _use_fast(impl) else y


@jax.custom_jvp
def _loop_fusion_boundary(y):
  """y rounded to its own precision: no change of value, an op YNNPACK does not fuse. Its
  tangent (and cotangent) passes through untouched: no rounding op in the backward pass."""
  info = jnp.finfo(y.dtype)
  return lax.reduce_precision(y, exponent_bits=info.nexp, mantissa_bits=info.nmant)


@_loop_fusion_boundary.defjvp
def _loop_fusion_boundary_jvp(primals, tangents):
  return _loop_fusion_boundary(primals[0]), tangents[0]


def compute_once(y, impl: str | None = None):
  """y itself; on CPU (`impl` as in `conv_impl`) as an op that XLA:CPU computes once and
  stores, instead of recomputing it inside each of its consumers.

  XLA's fusion duplicates a chain of cheap elementwise ops (slices, multiplies, adds) into
  every consumer that can take it in. RDNet's 7x7 depthwise sum (49 multiply-adds per output)
  was so recomputed inside its LayerNorm's forward and backward loops: five extra times in
  each mixer at 14x14 and 7x7, ~200 of rdnet_tiny's 3,500 ms per training step on one core
  (BENCHMARKS.md "Depthwise sums recomputed in the LayerNorm"). XLA does not duplicate an
  expensive op, a division, so y comes out of `y / (1 + 0 * y)`: exactly y wherever y is
  finite (XLA does not fold `0 * y` for floats; an inf becomes NaN). The divisor must not be
  a broadcast: XLA rewrites a division by a broadcast into a multiplication by its
  reciprocal, a cheap op again. The tangent (cotangent) passes through unchanged. Not for
  every layer: a stored output costs a write and a read where a consumer would have
  recomputed it cheaply (e.g. 3x3 depthwise sums before a BatchNorm).
  """
  return _compute_once(y) if _use_fast(impl) else y


@jax.custom_jvp
def _compute_once(y):
  return y / (1 + 0 * y)


@_compute_once.defjvp
def _compute_once_jvp(primals, tangents):
  return _compute_once(primals[0]), tangents[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_vjp(x, rhs, pads, out_dtype):
  """Stride-1 `_depthwise_sum` of x padded by `pads` (each side < K), with the VJP described
  in `depthwise_shifted`."""
  return _depthwise_sum(_pad(x, pads), rhs, (1,) * (x.ndim - 2), out_dtype)


def _depthwise_fwd(x, rhs, pads, out_dtype):
  return _depthwise_vjp(x, rhs, pads, out_dtype), (_pad(x, pads), rhs)


def _depthwise_bwd(pads, out_dtype, res, g):
  del out_dtype
  xp, rhs = res
  n = xp.ndim - 2
  ones = (1,) * n
  window = rhs.shape[:n]
  flipped = rhs[tuple(slice(None, None, -1) for _ in range(n))]
  acc = jnp.promote_types(g.dtype, jnp.float32)
  # Input gradient at the unpadded positions q: dx[q] = sum_k g[q + lo - k] w[k], a
  # correlation of the cotangent padded by K - 1 - lo below and K - 1 - hi above with the
  # flipped kernel.
  widths = ([(0, 0, 0)] + [(k - 1 - lo, k - 1 - hi, 0) for k, (lo, hi) in zip(window, pads)]
            + [(0, 0, 0)])
  dx_dtype = jnp.dtype(xp.dtype)

  def one_chunk(dw, xc, gc):
    gz = lax.pad(gc, jnp.zeros((), gc.dtype), widths)
    dx = _depthwise_sum(gz, flipped, ones, dx_dtype)
    return dw + _depthwise_kernel_grad(xc, gc, window, acc), dx

  # Both read the cotangent once per tap: a scan over chunks of images (`scan_batch_chunks`).
  per_image = (math.prod(xp.shape[1:]) * xp.dtype.itemsize
               + math.prod(g.shape[1:]) * g.dtype.itemsize)
  dw, dx = scan_batch_chunks(one_chunk, jnp.zeros((math.prod(window), xp.shape[-1]), acc),
                             (xp, g), per_image)
  return dx, dw.reshape(rhs.shape).astype(rhs.dtype)


_depthwise_vjp.defvjp(_depthwise_fwd, _depthwise_bwd)

# Bytes of cotangent rows per step of `_depthwise_kernel_grad`'s loop: the tap slices of x
# and the cotangent rows then stay in the per-core L2 cache while the K*K sums read them.
_ROW_BLOCK_BYTES = 512 * 2**10


def _depthwise_kernel_grad(xp, g, window, acc, block_sums=None, block_bytes=None):
  """Kernel gradient [prod(window), C] of a stride-1 depthwise sum: per tap, the sum over
  images and positions of the shifted padded input xp [N, *S + window - 1, C] times the
  cotangent g [N, *S, C], accumulated in `acc`. `block_sums(xs, gs, window, acc)` sums one
  block (None: `_per_tap_sums`), `block_bytes` sizes it (None: `_ROW_BLOCK_BYTES`); the
  benchmarks' baselines swap both.

  A scan over blocks of rows of one image at a time (`_ROW_BLOCK_BYTES` of g), and in each
  block ONE variadic reduction whose K*K outputs are the taps' sums (`_per_tap_sums`). One
  reduction per tap over all of g instead stores each tap's slice of x (XLA:CPU does not fuse
  the slice into its YNNPACK reduction) and reads it back: K*K activation-sized round trips;
  one reduction per tap over a block of rows keeps those in cache but runs K*K small ops per
  block (rdnet_tiny: ~60k ops per step). BENCHMARKS.md "One variadic reduction of all taps".
  """
  n_images, rows = g.shape[0], g.shape[1]
  row_bytes = math.prod(g.shape[2:]) * jnp.dtype(acc).itemsize
  block = _chunk_size(rows, row_bytes,
                      budget=_ROW_BLOCK_BYTES if block_bytes is None else block_bytes)
  blocks = rows // block
  block_sums = _per_tap_sums if block_sums is None else block_sums

  def one_block(dw, index):
    image, row = index // blocks, (index % blocks) * block
    xs = lax.dynamic_slice_in_dim(lax.dynamic_slice_in_dim(xp, image, 1, axis=0), row,
                                  block + window[0] - 1, axis=1)
    gs = lax.dynamic_slice_in_dim(lax.dynamic_slice_in_dim(g, image, 1, axis=0), row, block,
                                  axis=1)
    return dw + block_sums(xs, gs, window, acc), None

  dw, _ = lax.scan(one_block, jnp.zeros((math.prod(window), g.shape[-1]), acc),
                   jnp.arange(n_images * blocks))
  return dw


# At most this many taps per variadic reduction of `_per_tap_sums` (whole kernel rows).
_TAPS_PER_REDUCE = 16


def _per_tap_sums(xp, g, window, acc, taps_per_reduce=None):
  """[prod(window), C]: per tap, sum over all but the channel axis of the tap's slice of xp
  times g, as variadic `lax.reduce`s over groups of whole kernel rows of at most
  `taps_per_reduce` (None: `_TAPS_PER_REDUCE`) taps: each group one loop that reads the
  block of g once. One reduction of all 49 taps of a 7x7 kernel keeps 49 accumulators per
  channel vector (more than the registers); groups of two rows (14 taps) made the kernel
  gradient 1.4x faster on rdnet_tiny's shapes, while 3x3 (9 taps) and 5x5 (15) stay one
  reduction (BENCHMARKS.md "Depthwise kernel gradient: taps per reduction")."""
  g = g.astype(acc)
  ones = (1,) * (g.ndim - 2)
  terms = [t for _, t in _shifted_terms(xp, window, ones, g.shape[1:-1])]
  row = math.prod(window[1:])
  per = max(1, (taps_per_reduce or _TAPS_PER_REDUCE) // row) * row
  sums = []
  for start in range(0, len(terms), per):
    prods = [t.astype(acc) * g for t in terms[start:start + per]]
    zeros = [jnp.zeros((), acc)] * len(prods)
    sums += lax.reduce(prods, zeros, lambda a, b: [u + v for u, v in zip(a, b)],
                       tuple(range(g.ndim - 1)))
  return jnp.stack(sums)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
