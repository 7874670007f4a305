"""Normalization layers with PyTorch's conventions, shared by the CNN families.

`batch_norm` is PyTorch's `nn.BatchNorm2d` (momentum 0.1 in torch = 0.9 in Flax, eps 1e-5);
`layer_norm` is timm's `LayerNorm2d` (eps 1e-6), which normalizes over channels only, i.e.
the last axis of an NHWC tensor. Both compute their statistics in float32 and keep float32
parameters when the compute `dtype` is bfloat16 (mixed precision), and both use the two-pass
variance E[(x - mean)^2] instead of E[x^2] - mean^2 so that converted timm weights give the
same logits to 1e-5.

On CPU (`jaxdl.layers.conv_impl`'s "auto"), training-mode BatchNorm has a custom VJP
(`batch_norm_train`): instead of autodiff's several elementwise passes over the activation,
its backward pass is the two per-channel sums (of g and of g * xhat) and one elementwise pass
for the input gradient (BENCHMARKS.md "BatchNorm on CPU").
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxdl.layers import conv as conv_lib
from jaxdl.layers.activations import sow_relu


def batch_norm(train: bool, name: str, dtype: Any = None, param_dtype: Any = jnp.float32,
               momentum: float = 0.9, epsilon: float = 1e-5,
               scale_init: Callable = nn.initializers.ones) -> "BatchNorm":
  """PyTorch-style BatchNorm over the last axis; running statistics in `batch_stats`."""
  return BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                   dtype=dtype, param_dtype=param_dtype, scale_init=scale_init, name=name)


class BatchNorm(nn.Module):
  """`nn.BatchNorm(use_fast_variance=False)` over the last axis, with `batch_norm_train`.

  Same variables (params scale / bias, batch_stats mean / var), initial values, running
  average update (on the biased batch variance) and arithmetic as `nn.BatchNorm`; converted
  timm weights and checkpoints load unchanged.
  """
  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  scale_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array, relu: bool = False) -> jax.Array:
    """BatchNorm of x [..., C]; `relu`: then a ReLU (fused into the training-mode VJP)."""
    features = (x.shape[-1],)
    scale = self.param("scale", self.scale_init, features, self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, features, self.param_dtype)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
    train = not self.use_running_average
    y, mean, var = batch_norm_fn(x, scale, bias, ra_mean.value, ra_var.value, train,
                                 self.dtype, relu, self.epsilon)
    if train and not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


def batch_norm_fn(x, scale, bias, running_mean, running_var, train: bool, dtype: Any = None,
                  relu: bool = False, epsilon: float = 1e-5):
  """`BatchNorm`'s arithmetic (then a ReLU if `relu`) as a function: (y, mean, var).

  Training: `batch_norm_train` (batch statistics); evaluation: `normalize` with the running
  ones, which are returned as (mean, var). y is cast to `dtype` (None: the promoted dtype of
  x and the parameters).
  """
  if train:
    y, mean, var = batch_norm_train(x, scale, bias, epsilon, relu=relu)
  else:
    mean, var = running_mean, running_var
    y = normalize(x, mean, var, scale, bias, epsilon)
    y = jax.nn.relu(y) if relu else y
  return y.astype(dtype or jnp.result_type(x, scale, bias)), mean, var


def batch_norm_relu(module: nn.Module, bn: BatchNorm, x: jax.Array, name: str) -> jax.Array:
  """ReLU(bn(x)), sowing the ReLU's input as `preactivations/<name>` (as `sow_relu`).

  When the preactivations are not collected, the ReLU runs inside `bn` (fused into its
  training-mode VJP); when they are, `bn(x)` is computed and recorded first.
  """
  if module.is_mutable_collection("preactivations"):
    return sow_relu(module, bn(x), name)
  return bn(x, relu=True)


def normalize(x, mean, var, scale, bias, epsilon: float = 1e-5):
  """(x - mean) * (rsqrt(var + epsilon) * scale) + bias, `nn.BatchNorm`'s order of operations."""
  return (x - mean) * (lax.rsqrt(var + epsilon) * scale) + bias


def _moments(x, fusable: bool = False):
  """Per-channel mean and biased two-pass variance of x [..., C], in float32 or wider.

  fusable: pass the mean to the variance through `lax.optimization_barrier`. The values are
  the same; XLA:CPU then computes the variance's sum of (x - mean)^2 in one YNNPACK reduction
  that reads x, instead of first storing x - mean (an activation-sized write and read). It
  fuses the subtraction only when the broadcast vector is a computed array, not an
  expression that it folds into the subtraction (the mean's 1/n), which the barrier keeps
  apart.
  """
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  axes = tuple(range(x.ndim - 1))
  mean = xf.mean(axis=axes)
  center = lax.optimization_barrier(mean) if fusable else mean
  return mean, jnp.square(xf - center).mean(axis=axes)


def batch_norm_train(x, scale, bias, epsilon: float = 1e-5, *, relu: bool = False,
                     impl: str | None = None):
  """Training-mode BatchNorm of x [..., C] over all axes but the last (then a ReLU if `relu`).

  Returns (y, batch mean, biased batch variance); y = `normalize` with the batch statistics,
  in the promoted dtype of x and the parameters (statistics in float32 or wider). `impl`
  as in `jaxdl.layers.conv_general_dilated` (None: the `conv_impl` context): the fast
  formulation is a custom VJP (see the module docstring; with `relu`, the ReLU's mask is
  recomputed from x in the backward pass instead of being stored) whose values and
  gradients equal autodiff's up to summation order; it rules out forward-mode autodiff, for
  which trace under `conv_impl("xla")`.
  """
  if conv_lib._use_fast(impl):
    return _bn_vjp(x, scale, bias, epsilon, relu)
  return _bn_plain(x, scale, bias, epsilon, relu)


def _bn_plain(x, scale, bias, epsilon, relu, fusable=False):
  mean, var = _moments(x, fusable)
  y = normalize(x, mean, var, scale, bias, epsilon)
  return (jax.nn.relu(y) if relu else y), mean, var


# The formulation of `_bn_fwd` / `_bn_bwd` whose per-channel sums XLA:CPU fuses into one read
# of x each instead of storing x - mean (BENCHMARKS.md "BatchNorm on CPU"); False: the plain
# two-pass sums (tools/bench_models.py --variants bn-stored-center).
_FUSABLE_SUMS = True


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _bn_vjp(x, scale, bias, epsilon, relu):
  return _bn_plain(x, scale, bias, epsilon, relu, _FUSABLE_SUMS)


def _bn_fwd(x, scale, bias, epsilon, relu):
  y, mean, var = _bn_plain(x, scale, bias, epsilon, relu, _FUSABLE_SUMS)
  return (y, mean, var), (x, scale, bias, mean, var)


def _bn_bwd(epsilon, relu, res, cts):
  x, scale, bias, mean, var = res
  gy, gmean, gvar = cts
  acc = mean.dtype
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  rstd = lax.rsqrt(var + epsilon)
  xf = x.astype(acc)
  xc = xf - mean
  gamma = scale.astype(acc)
  a = gamma * rstd
  g = gy.astype(acc)
  if relu:  # the ReLU's input, recomputed: elementwise work fused into the passes below
    g = jnp.where(xc * a + bias.astype(acc) > 0, g, jnp.zeros((), acc))
  # The two per-channel sums over x and gy, then one elementwise pass for dx.
  sum_g = g.sum(axis=axes)
  if _FUSABLE_SUMS:
    # sum g (x - mean) = sum g (x - s) - (mean - s) sum g with s = x at the first position:
    # XLA:CPU fuses x - s into the YNNPACK reduction, whereas x - mean (which the forward's
    # variance computes too) it stores once for both. A shift by a sample of x keeps the
    # cancellation as small as the two-pass sum's (the shifted-data variance algorithm).
    s = xf[(0,) * (x.ndim - 1)]
    sum_gx = ((g * (xf - s)).sum(axis=axes) - (mean - s) * sum_g) * rstd
  else:
    sum_gx = (g * xc).sum(axis=axes) * rstd  # = sum g * xhat
  # dx = gamma rstd (g - mean(g) - xhat mean(g xhat)) + the terms of the mean and
  # variance outputs (their cotangents are zero when only running averages use them).
  b = a * rstd * sum_gx / count - 2 * gvar.astype(acc) / count
  c = gmean.astype(acc) / count - a * sum_g / count
  dx = a * g - b * xc + c
  return (dx.astype(x.dtype), sum_gx.astype(scale.dtype), sum_g.astype(bias.dtype))


_bn_vjp.defvjp(_bn_fwd, _bn_bwd)


def concat_normalize_relu(xs, mean, var, scale, bias, epsilon: float = 1e-5):
  """relu(normalize(concatenate(xs, -1), mean, var, scale, bias, epsilon)) with a custom VJP.

  A DenseNet layer's BatchNorm + ReLU over the concatenation of the earlier feature maps xs
  [..., C_i], given the per-channel statistics (mean, var) [sum C_i] instead of computing
  them: the batch statistics of a concatenation are the concatenation of each input's, so a
  dense block computes them once per feature map (`_moments`) rather than once per layer
  that reads it, and differentiates through them once per feature map. The backward pass
  is the two per-channel sums (of g and of g (x - mean); XLA:CPU's YNNPACK reductions read
  the concatenation, which it therefore still stores once, in the forward pass) and
  dx_i = scale rstd g_i per input, which fuses into the accumulation of x_i's gradient over
  the layers that read it; the terms of the statistics (dmean, dvar) are returned for
  `_moments`' VJP. Values and gradients equal
  autodiff's up to summation order. Returns the promoted dtype of xs and the parameters.
  """
  return _cnr_vjp(tuple(xs), mean, var, scale, bias, epsilon)


def _concat(xs):
  return jnp.concatenate(xs, axis=-1) if len(xs) > 1 else xs[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _cnr_vjp(xs, mean, var, scale, bias, epsilon):
  return jax.nn.relu(normalize(_concat(xs), mean, var, scale, bias, epsilon))


def _cnr_fwd(xs, mean, var, scale, bias, epsilon):
  return _cnr_vjp(xs, mean, var, scale, bias, epsilon), (xs, mean, var, scale, bias)


def _cnr_bwd(epsilon, res, gy):
  xs, mean, var, scale, bias = res
  acc = jnp.promote_types(mean.dtype, jnp.float32)
  axes = tuple(range(gy.ndim - 1))
  x = _concat(xs).astype(acc)
  rstd = lax.rsqrt(var.astype(acc) + epsilon)
  a = scale.astype(acc) * rstd
  # The forward's normalization (same order of operations): the ReLU's mask.
  g = jnp.where((x - mean) * a + bias.astype(acc) > 0, gy.astype(acc), jnp.zeros((), acc))
  # Shifted sums, as `_bn_bwd`; the shift taken from the inputs, not from their
  # concatenation (which XLA would then store to read one position of it).
  s = _concat([xi[(0,) * len(axes)] for xi in xs]).astype(acc)
  sum_g = g.sum(axis=axes)
  sum_gxc = (g * (x - s)).sum(axis=axes) - (mean - s) * sum_g  # = sum g (x - mean)
  dx = a * g
  splits = list(itertools.accumulate(xi.shape[-1] for xi in xs))[:-1]
  dxs = tuple(d.astype(xi.dtype) for d, xi in zip(jnp.split(dx, splits, axis=-1), xs))
  dmean = -a * sum_g
  dvar = -0.5 * a * rstd * rstd * sum_gxc
  return (dxs, dmean.astype(mean.dtype), dvar.astype(var.dtype),
          (sum_gxc * rstd).astype(scale.dtype), sum_g.astype(bias.dtype))


_cnr_vjp.defvjp(_cnr_fwd, _cnr_bwd)


def layer_norm(name: str, dtype: Any = None, param_dtype: Any = jnp.float32,
               epsilon: float = 1e-6, fast_variance: bool = False) -> nn.LayerNorm:
  """timm's LayerNorm2d for NHWC tensors: normalizes each position over its channels.

  The variance is E[(x - mean)^2] (two passes, as PyTorch), or with `fast_variance`
  E[x^2] - mean^2 (flax's default; float32 statistics either way).
  """
  return nn.LayerNorm(epsilon=epsilon, use_fast_variance=fast_variance, dtype=dtype,
                      param_dtype=param_dtype, name=name)
