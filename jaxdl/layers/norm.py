"""Normalization layers with PyTorch's conventions, shared by the CNN families.

`batch_norm` is PyTorch's `nn.BatchNorm2d` (momentum 0.1 in torch = 0.9 in Flax, eps 1e-5);
`layer_norm` is timm's `LayerNorm2d` (eps 1e-6), which normalizes over channels only, i.e.
the last axis of an NHWC tensor. Both compute their statistics in float32 and keep float32
parameters when the compute `dtype` is bfloat16 (mixed precision), and both use the two-pass
variance E[(x - mean)^2] instead of E[x^2] - mean^2 so that converted timm weights give the
same logits to 1e-5.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def batch_norm(train: bool, name: str, dtype: Any = None, param_dtype: Any = jnp.float32,
               momentum: float = 0.9, epsilon: float = 1e-5) -> nn.BatchNorm:
  """PyTorch-style BatchNorm over the last axis; running statistics in `batch_stats`."""
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                      use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name)


def layer_norm(name: str, dtype: Any = None, param_dtype: Any = jnp.float32,
               epsilon: float = 1e-6) -> nn.LayerNorm:
  """timm's LayerNorm2d for NHWC tensors: normalizes each position over its channels."""
  return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, dtype=dtype,
                      param_dtype=param_dtype, name=name)
