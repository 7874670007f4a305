"""`lax.dot_general` whose dense-layer contractions are one 2-D matmul on XLA:CPU.

A dense layer applied to a [B, T, D] (or [N, H, W, C]) input contracts the last axis of the
input with the first of the kernel. Its kernel gradient then contracts over all the leading
axes (B, T) at once, and XLA:CPU canonicalizes that dot with a transpose of the cotangent
into [F, B*T]; the transpose fuses into the elementwise producer of the cotangent (the
backward of a BatchNorm / LayerNorm / GELU) as a strided write. Flattening the leading axes
first makes both gradients plain 2-D matmuls that need no transpose: backward passes of the
model zoo's 1x1 layers, PFN MLPs and prototype distances run 1.5-3.3x faster
(`tools/bench_conv.py --dense`, BENCHMARKS.md "Dense contractions on CPU"). Values are
those of the dot up to float32 summation order.

Use it as `nn.Dense(..., dot_general=jaxdl.layers.dot_general)`; `jaxdl.layers.Dense` and
`jaxdl.layers.DenseGeneral` are those partials. Parameter names and layouts are flax's.
Other backends keep `lax.dot_general` unchanged under `conv_impl("auto")` (their dot
emitters take any contraction layout), as does `conv_impl("xla")`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
from jax import lax

from jaxdl.layers import conv as _conv
from jaxdl.layers.conv import matmul_2d


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                *, impl: str | None = None, **kwargs):
  """`lax.dot_general`'s signature and result (see the module docstring).

  A contraction of the trailing axes of `lhs` with the leading axes of `rhs` (in order,
  no batch axes) becomes `matmul_2d` on CPU; any other call is passed through.
  """
  (lc, rc), (lb, rb) = dimension_numbers
  lc, rc = tuple(lc), tuple(rc)
  n = len(lc)
  if (_conv._use_fast(impl) and not kwargs and not lb and not rb and n >= 1
      and lc == tuple(range(lhs.ndim - n, lhs.ndim)) and rc == tuple(range(n))):
    return matmul_2d(lhs, rhs, n, precision, preferred_element_type)
  return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                         preferred_element_type=preferred_element_type, **kwargs)


Dense = functools.partial(nn.Dense, dot_general=dot_general)
DenseGeneral = functools.partial(nn.DenseGeneral, dot_general=dot_general)
