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
  the tap's offset: slices of the once-padded cotangent (a fused loop per phase); the
  phases are interleaved back with one reshape (`_scatter_taps`); a scan over chunks of
  images keeps XLA from fusing the producers of the cotangent and of the argmax into this
  per-tap loop.

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
import numpy as np
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
  if not _SCAN_CHUNKS or all(w <= s for w, s in zip(window, strides)):
    # Windows that do not overlap read each element of g and idx once: nothing to recompute.
    return (_scatter_taps(window, strides, pads, idx, g, x_shape),)
  per_image = g.dtype.itemsize * math.prod(x_shape[1:])
  _, dx = _conv.scan_batch_chunks(
      lambda _, i, gc: (None, _scatter_taps(window, strides, pads, i, gc,
                                            (i.shape[0],) + x_shape[1:])),
      None, (idx, g), per_image)
  return (dx,)


# Whether the backward pass of overlapping windows (window > stride) runs over chunks of
# images (`scan_batch_chunks`). Over the whole batch XLA:CPU fuses the producers of its inputs
# into the per-tap loop and recomputes them per tap: the forward's argmax over the window
# (idx) and the cotangent's producer (the DenseNet-121 stem: one 82 ms fusion instead of
# ~20 ms; tools/bench_models.py --variants pool-no-scan; BENCHMARKS.md "Training-step
# elementwise work on CPU"). Without overlap the whole batch at once is faster (VGG's 2x2/2:
# 16.5 vs 59.9 ms).
_SCAN_CHUNKS = True


def _phase_taps(stride, lo, window, residue):
  """[(tap offset k, output shift d)]: input positions p = stride * m + residue receive tap k
  of output m + d, for every k with k = residue + lo - stride * d."""
  return [(k, (residue + lo - k) // stride) for k in range(window)
          if (residue + lo - k) % stride == 0]


def _scatter_taps(window, strides, pads, idx, g, x_shape):
  """The max-pool input gradient: the cotangent sent to the tap that held each maximum.

  The input positions split by their residue modulo the stride into prod(strides) phases;
  phase position m receives, from each tap k of its residue, the cotangent of output m + d
  where that output's maximum was tap k. g and idx are padded once so that every term is a
  plain slice (no per-term padding, whose bounds checks XLA:CPU evaluates per element: the
  stem pool's backward alone over a batch of 8, 9.5 ms against 2.0); the phases are
  interleaved with one reshape.
  """
  n = len(window)
  sizes, out_sizes = tuple(x_shape[1:-1]), tuple(g.shape[1:-1])
  m_sizes = tuple(-(-size // s) for size, s in zip(sizes, strides))  # positions per phase
  per_dim = [[_phase_taps(s, lo, w, r) for r in range(s)]
             for s, (lo, _), w in zip(strides, pads, window)]
  shifts = [[d for taps in dim for _, d in taps] or [0] for dim in per_dim]
  lo_pad = [max(0, -min(d)) for d in shifts]
  hi_pad = [max(0, m - 1 + max(d) - (o - 1)) for m, d, o in zip(m_sizes, shifts, out_sizes)]
  widths = [(0, 0)] + list(zip(lo_pad, hi_pad)) + [(0, 0)]
  gp = jnp.pad(g, widths)
  ip = jnp.pad(idx, widths, constant_values=-1)
  zero = jnp.zeros((), g.dtype)
  phases = []
  for residue in itertools.product(*(range(s) for s in strides)):
    acc = None
    for combo in itertools.product(*(per_dim[d][r] for d, r in enumerate(residue))):
      # The tap's index in window order (`_forward`'s idx).
      k = int(np.ravel_multi_index(tuple(offset for offset, _ in combo), window))
      sl = ((slice(None),) + tuple(slice(a + d, a + d + m)
                                   for (_, d), a, m in zip(combo, lo_pad, m_sizes)))
      term = jnp.where(ip[sl] == k, gp[sl], zero)
      acc = term if acc is None else acc + term
    if acc is None:
      acc = jnp.zeros((g.shape[0],) + m_sizes + (g.shape[-1],), g.dtype)
    phases.append(acc)
  # [prod s, N, *M, C] -> [N, M1, s1, M2, s2, ..., C] -> [N, M1*s1, ..., C], cropped.
  stacked = jnp.stack(phases).reshape(tuple(strides) + phases[0].shape)
  perm = (n,) + tuple(i for d in range(n) for i in (n + 1 + d, d)) + (2 * n + 1,)
  full = stacked.transpose(perm).reshape(
      (g.shape[0],) + tuple(m * s for m, s in zip(m_sizes, strides)) + (g.shape[-1],))
  return full[(slice(None),) + tuple(slice(0, size) for size in sizes)]


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
