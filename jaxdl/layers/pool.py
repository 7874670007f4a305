"""Max pooling whose gradient is cheap on XLA:CPU.

`flax.linen.max_pool` is `lax.reduce_window(max)`. Its gradient on XLA:CPU is a variadic
reduce-window that carries the window position of the maximum through four full-size int32
iota arrays, then a scatter (the ResNet-50 / DenseNet-121 stem pool on [8, 112, 112, 64]:
BENCHMARKS.md "Depthwise and max-pool gradients on CPU"). Here, on CPU:

- forward under differentiation: the maximum over the K*K strided slices of the (-inf)
  padded input, one fused loop, which also records which tap held the maximum (the first
  one in window order on ties, as `lax.reduce_window`'s gradient and PyTorch choose);
  without differentiation, `nn.max_pool` itself;
- backward (custom VJP): the input positions split by their residue modulo the stride into
  s*s phases; each phase receives the cotangent of the taps with that residue, shifted by
  the tap's offset (a fused loop per phase); the phases are interleaved back with one
  reshape; a scan over chunks of images keeps XLA from fusing the cotangent's producer into
  this per-tap loop.

Values and gradients equal `nn.max_pool`'s (tests/layers/test_pool.py). Other backends, and
`conv_impl("xla")`, use `nn.max_pool`. The custom VJP rules out forward-mode autodiff through
the CPU path (trace under `conv_impl("xla")` for `jax.jvp` / `jax.hessian`).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxdl import errors
from jaxdl.layers import conv as _conv


def max_pool(x, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding="VALID", *, impl: str | None = None):
  """`nn.max_pool(x, window_shape, strides, padding)` for channels-last x [N, *S, C]."""
  window = tuple(window_shape)
  strides = tuple(strides) if strides is not None else (1,) * len(window)
  if not _conv._use_fast(impl):
    return nn.max_pool(x, window, strides, padding)
  if x.ndim != len(window) + 2 or len(strides) != len(window):
    raise errors.ShapeError(f"max_pool takes x [N, *spatial, C] with one window size and "
                            f"stride per spatial axis; got x {x.shape}, window {window}, "
                            f"strides {strides}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    return nn.max_pool(x, window, strides, padding)
  if isinstance(padding, str):
    pads = tuple(lax.padtype_to_pads(x.shape[1:-1], window, strides, padding))
  else:
    pads = tuple(tuple(p) for p in padding)
  return _max_pool(x, window, strides, pads)


def _forward(x, window, strides, pads):
  neg = jnp.array(-jnp.inf, x.dtype)
  xp = lax.pad(x, neg, ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in pads) + ((0, 0, 0),))
  out_sizes = _conv._output_sizes(xp, window, strides)
  taps = list(_conv._shifted_terms(xp, window, strides, out_sizes))
  y = functools.reduce(jnp.maximum, (t for _, t in taps))
  # The first tap in window order that holds the maximum (scan backwards, keep the lowest).
  idx = jnp.full(y.shape, len(taps) - 1, jnp.int8 if len(taps) < 128 else jnp.int32)
  for k in range(len(taps) - 2, -1, -1):
    idx = jnp.where(taps[k][1] == y, jnp.asarray(k, idx.dtype), idx)
  return y, idx


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, pads):
  # Undifferentiated (inference), XLA's reduce-window is as fast or faster (2.7x for a
  # 2x2/2 pool on [80, 56, 56, 256]); the values are the same maxima.
  return nn.max_pool(x, window, strides, pads)


def _max_pool_fwd(x, window, strides, pads):
  y, idx = _forward(x, window, strides, pads)
  return y, (idx, x.shape)


def _max_pool_bwd(window, strides, pads, res, g):
  idx, x_shape = res
  # A scan over chunks of images (see `scan_batch_chunks`): each tap reads g, and a fused
  # producer of g would otherwise be recomputed per tap (the DenseNet-121 stem pool: 0.35 s
  # of a 3.3 s training step).
  per_image = g.dtype.itemsize * math.prod(x_shape[1:])
  _, dx = _conv.scan_batch_chunks(
      lambda _, i, gc: (None, _scatter_taps(window, strides, pads, i, gc,
                                            (i.shape[0],) + x_shape[1:])),
      None, (idx, g), per_image)
  return (dx,)


def _scatter_taps(window, strides, pads, idx, g, x_shape):
  """The max-pool input gradient: the cotangent sent to the tap that held each maximum."""
  n = len(window)
  padded = tuple(s + lo + hi for s, (lo, hi) in zip(x_shape[1:-1], pads))
  out_sizes = g.shape[1:-1]
  q_sizes = tuple(-(-p // s) for p, s in zip(padded, strides))  # positions per phase, max
  zero = jnp.zeros((), g.dtype)
  phases = []
  for residue in itertools.product(*(range(s) for s in strides)):
    acc = None
    for k, offset in enumerate(itertools.product(*(range(w) for w in window))):
      if any(o % s != r for o, s, r in zip(offset, strides, residue)):
        continue
      term = jnp.where(idx == k, g, zero)
      # tap `offset` sends output o to padded position s*o + offset: phase index o + o//s.
      shift = [(o // s, q - size - o // s, 0)
               for o, s, q, size in zip(offset, strides, q_sizes, out_sizes)]
      term = lax.pad(term, zero, [(0, 0, 0)] + shift + [(0, 0, 0)])
      acc = term if acc is None else acc + term
    if acc is None:
      acc = jnp.zeros((g.shape[0],) + q_sizes + (g.shape[-1],), g.dtype)
    phases.append(acc)
  # [prod s, N, *Q, C] -> [N, Q1, s1, Q2, s2, ..., C] -> [N, Q1*s1, ..., C]
  stacked = jnp.stack(phases).reshape(tuple(strides) + phases[0].shape)
  perm = (n,) + tuple(i for d in range(n) for i in (n + 1 + d, d)) + (2 * n + 1,)
  full = stacked.transpose(perm).reshape(
      (g.shape[0],) + tuple(q * s for q, s in zip(q_sizes, strides)) + (g.shape[-1],))
  crop = (slice(None),) + tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, x_shape[1:-1]))
  return full[crop]


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
