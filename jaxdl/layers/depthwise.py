"""Depthwise convolution that is fast on XLA:CPU.

XLA:CPU lowers a grouped convolution with one channel per group (`feature_group_count = C`)
to a slow generic loop: for RDNet's 7x7 depthwise layer on [8, 56, 56, 64] the forward pass
took 167 ms and forward + backward 935 ms on 2 cores, against 6.4 ms and 269 ms for the same
result written as K*K shifted multiply-adds, which XLA fuses into one elementwise loop
(tools/bench_models.py, BENCHMARKS.md "Model zoo"). GPUs and TPUs have fast depthwise
convolutions, so `impl="auto"` uses the shifted sums on CPU only. Parameters have
`nn.Conv`'s names and layout (kernel [K, K, 1, C], bias [C]), so checkpoints and converted
timm weights are the same for both implementations.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl import errors
from jaxdl.layers import conv as conv_lib

IMPLS = ("auto", "conv", "shifted")
# jaxdl.layers.conv names; "auto" is the `conv_impl` context's choice (by default: shifted
# sums on CPU, the convolution elsewhere), so `conv_impl("xla")` governs this layer as well.
_CONV_IMPL = {"auto": None, "conv": "xla", "shifted": "fast"}


def depthwise_conv(x: jax.Array, kernel: jax.Array, *, impl: str = "auto") -> jax.Array:
  """Stride-1 'same' depthwise convolution.

  Args:
    x: [N, H, W, C].
    kernel: [K, K, 1, C] (K odd), `nn.Conv(..., feature_group_count=C)`'s layout.
    impl: "conv" (lax.conv_general_dilated), "shifted" (K*K shifted multiply-adds,
      accumulated in float32) or "auto" (what `jaxdl.layers.conv.conv_impl` selects: by
      default "shifted" on CPU, "conv" elsewhere).
  Returns:
    [N, H, W, C] in x's dtype.
  """
  if impl not in IMPLS:
    raise errors.ConfigError(f"depthwise impl must be one of {IMPLS}, got {impl!r}.")
  kh, kw, one, c = kernel.shape
  if one != 1 or c != x.shape[-1] or kh % 2 == 0 or kw % 2 == 0:
    raise errors.ShapeError(f"depthwise_conv takes an odd [K, K, 1, C] kernel for C = "
                            f"{x.shape[-1]} input channels, got kernel shape {kernel.shape}.")
  ph, pw = kh // 2, kw // 2
  y = conv_lib.conv_general_dilated(
      x, kernel, (1, 1), ((ph, ph), (pw, pw)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=c, impl=_CONV_IMPL[impl])
  return y.astype(x.dtype)  # the shifted sums promote mixed dtypes; the convolution rejects them


class DepthwiseConv(nn.Module):
  """Drop-in for `nn.Conv(C, (K, K), padding=K // 2, feature_group_count=C)`, stride 1."""
  kernel_size: int
  use_bias: bool = True
  impl: str = "auto"
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c, k = x.shape[-1], self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, 1, c), self.param_dtype)
    bias = self.param("bias", self.bias_init, (c,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = depthwise_conv(x, kernel, impl=self.impl)
    return y + bias if bias is not None else y
