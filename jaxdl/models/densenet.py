"""DenseNet-BC (Huang et al. 2017, "Densely Connected Convolutional Networks", Sec. 3).

Layer l of a dense block sees the concatenation of all earlier feature maps,
x_l = H_l([x_0, x_1, ..., x_{l-1}]), with the bottleneck composite function (DenseNet-B)
H_l = BN-ReLU-Conv1x1(bn_size * k)-BN-ReLU-Conv3x3(k), k the growth rate. Transitions
between blocks (DenseNet-C) are BN-ReLU-Conv1x1(floor(C * compression))-AvgPool2x2.

ImageNet variants follow timm's `densenet.py` (and torchvision) exactly, with the same module
names so that `load_timm_state_dict` maps timm weights mechanically:

  conv0 (7x7/2) - norm0 - ReLU - maxpool 3x3/2          stem, 2k channels
  denseblock{b}/denselayer{l}/{norm1, conv1, norm2, conv2}   b = 1..4, l = 1..n_b
  transition{b}/{norm, conv}                             after blocks 1..3
  norm5 - ReLU - global average pool - classifier        head

CIFAR variants (`densenet_bc_*`, the paper's Table 2) replace the stem with one 3x3 conv
(2k channels, no BN) and use three blocks. Block list for analysis code (CAM target layers,
patch inference): the stem, then `denseblock1, transition1, ..., denseblock{B}`, then `norm5`.

Memory-efficient dense layers (Pleiss et al. 2017, "Memory-Efficient Implementation of
DenseNets"): with `memory_efficient=True` the concatenation + norm1 + ReLU + conv1 of every
dense layer (and the cheap elementwise norm2 + ReLU after it) is recomputed in the backward
pass instead of stored. The first part's activations grow quadratically with depth (layer l
reads C0 + l*k channels); only each layer's k new channels and the bn_size*k-channel input
of its conv2 stay live. The forward values are identical. `remat="recompute"`
(default) does it with a custom VJP (jaxdl.layers.remat) that works on every backend;
`remat="checkpoint"` uses `jax.checkpoint` with the `nothing_saveable` policy, which XLA:CPU
undoes (it expands optimization barriers before CSE), see BENCHMARKS.md.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl import errors
from jaxdl.layers import sow_relu
from jaxdl.layers import conv as conv_lib
from jaxdl.layers.conv import Conv, conv_general_dilated
from jaxdl.layers.inputs import check_images
from jaxdl.layers.norm import (_moments, batch_norm, batch_norm_fn, batch_norm_relu,
                               concat_normalize_relu)
from jaxdl.layers.pool import max_pool
from jaxdl.layers.remat import accumulate_here, recompute_in_backward
from jaxdl.models.registry import register

# timm / torchvision initialize every conv with kaiming_normal_ (fan_in, gain sqrt(2)).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class _BatchNormVariables(nn.Module):
  """The variables of `nn.BatchNorm` (same names and initial values), for a functional BN."""
  features: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self):
    scale = self.param("scale", nn.initializers.ones, (self.features,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((self.features,),
                                                                  jnp.float32))
    var = self.variable("batch_stats", "var", lambda: jnp.ones((self.features,), jnp.float32))
    return scale, bias, (mean, var)


class _ConvKernel(nn.Module):
  """The kernel of a bias-free `nn.Conv` (same name and initializer)."""
  shape: tuple
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self):
    return self.param("kernel", _conv_init, self.shape, self.param_dtype)


def _rematerialized(fn, remat: str, perturb=None):
  """`fn` recomputed in the backward pass the way `remat` says ("recompute": the custom VJP
  of `recompute_in_backward`, `perturb` its argument; "checkpoint": `jax.checkpoint` with
  the nothing_saveable policy)."""
  if remat == "recompute":
    return recompute_in_backward(fn, perturb)
  if remat == "checkpoint":
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)
  raise errors.ConfigError(f"DenseNet remat must be 'recompute' or 'checkpoint', got "
                           f"{remat!r}.")


def _update_running_stats(variables, batch):
  """nn.BatchNorm's update of the running (mean, var) variables (momentum 0.9 = PyTorch's
  0.1), on the biased batch variance."""
  for var, b in zip(variables, batch):
    var.value = 0.9 * var.value + 0.1 * jax.lax.stop_gradient(b)


def _bottleneck(features, norm1, conv1, norm2, stats=None, *, train, dtype, want_pre):
  """concat - BN - ReLU - conv1x1 - BN - ReLU of a dense layer, as one pure function.

  features: tuple of [N, H, W, C_i]; norm1 / norm2: (scale, bias, running mean, running
  variance); conv1: kernel [1, 1, sum C_i, bn_size * k]; stats: None, or (training, no
  want_pre) the batch (mean, variance) of each feature map, which norm1 then uses through
  `concat_normalize_relu` (see `DenseBlock`). Returns (h [N, H, W, bn_size * k] = the input
  of conv2, (batch mean, batch variance) of norm1 and of norm2[, the inputs of both
  ReLUs]). This is the part that `memory_efficient` recomputes in the backward pass.
  """
  if stats is not None:
    m1 = jnp.concatenate([m for m, _ in stats])
    v1 = jnp.concatenate([v for _, v in stats])
    a1 = concat_normalize_relu(features, m1, v1, *norm1[:2])
    a1 = a1.astype(dtype or a1.dtype)
  else:
    x = jnp.concatenate(features, axis=-1) if len(features) > 1 else features[0]
    # Without want_pre the ReLUs run inside the BatchNorms (fused into their VJPs on CPU).
    a1, m1, v1 = batch_norm_fn(x, *norm1, train, dtype, relu=not want_pre)
  cdt = dtype or jnp.result_type(a1, conv1)
  h1 = jax.nn.relu(a1) if want_pre else a1
  z = conv_general_dilated(h1.astype(cdt), conv1.astype(cdt), (1, 1),
                           "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  a2, m2, v2 = batch_norm_fn(z, *norm2, train, dtype, relu=not want_pre)
  out = ((jax.nn.relu(a2) if want_pre else a2), (m1, v1), (m2, v2))
  return out + ((a1, a2),) if want_pre else out


BOTTLENECK_IMPLS = ("xla", "auto", "pallas", "mosaic_gpu")


def _kernel_bottleneck(features, norm1, conv1, norm2, *, train, dtype, want_pre, impl):
  """`_bottleneck` with concat - BN - ReLU - conv1x1 done by `kernels.dense_bottleneck`.

  Same contract as `_bottleneck`: BatchNorm statistics are computed input by input (no
  concatenation), folded into a per-channel scale/shift and differentiated through. On CPU
  the Pallas implementations run in interpret mode (a correctness path, not a fast one).
  """
  from jaxdl.kernels.dense_bottleneck import batch_moments, dense_bottleneck, fold_batch_norm
  if want_pre:  # Analysis: the plain path records the ReLU inputs.
    return _bottleneck(features, norm1, conv1, norm2, train=train, dtype=dtype,
                       want_pre=want_pre)
  gamma, beta, running_mean, running_var = norm1
  mean, var = batch_moments(features) if train else (running_mean, running_var)
  scale, shift = fold_batch_norm(gamma, beta, mean, var)
  cdt = dtype or jnp.float32
  z = dense_bottleneck(tuple(f.astype(cdt) for f in features), scale, shift,
                       conv1.astype(cdt), impl=impl, out_dtype=cdt,
                       interpret=jax.default_backend() == "cpu")
  h, m2, v2 = batch_norm_fn(z, *norm2, train, dtype, relu=True)
  return h, (mean, var), (m2, v2)


class DenseLayer(nn.Module):
  """One bottleneck layer: new features [N, H, W, k] from the list of earlier features.

  Attributes:
    memory_efficient: recompute concat + norm1 + ReLU + conv1 (+ norm2 + ReLU, cheap
      elementwise work whose four saved [N, H, W, 4k] tensors would otherwise dominate) in
      the backward pass; only the layer inputs and the input of conv2 stay stored. The
      block then reads its feature maps through `accumulate_here` links, so that the
      backward pass sums their cotangents layer by layer (XLA otherwise keeps every
      layer's input gradient until one late fused sum: DenseNet-BC-100 training step at
      batch 64, temporaries 1,169 vs 497 MiB compiled for an H200, 813 vs 508 MiB on CPU).
    remat: how. "recompute" (default): a custom VJP that re-runs them on the saved inputs,
      effective on every backend. "checkpoint": `jax.checkpoint` with the
      `nothing_saveable` policy, effective on GPU/TPU but undone by XLA:CPU, which expands
      the optimization barriers and merges the recomputation with the forward pass.
    bottleneck_impl: "xla" (default) or a `jaxdl.kernels.dense_bottleneck` implementation
      ("auto", "pallas", "mosaic_gpu") that never materializes the concatenation.
  """
  growth_rate: int
  bn_size: int = 4
  drop_rate: float = 0.0
  memory_efficient: bool = False
  remat: str = "recompute"
  bottleneck_impl: str = "xla"
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], train: bool = False,
               stats: Sequence[tuple[jax.Array, jax.Array]] | None = None) -> jax.Array:
    """features: the earlier feature maps; stats: None, or their batch (mean, variance)
    (training only), which norm1 then uses instead of computing its own (`DenseBlock`)."""
    c_in = sum(f.shape[-1] for f in features)
    width = self.bn_size * self.growth_rate
    *norm1, stats1 = _BatchNormVariables(c_in, self.param_dtype, name="norm1")()
    kernel = _ConvKernel((1, 1, c_in, width), self.param_dtype, name="conv1")()
    *norm2, stats2 = _BatchNormVariables(width, self.param_dtype, name="norm2")()
    want_pre = self.is_mutable_collection("preactivations")
    if self.bottleneck_impl not in BOTTLENECK_IMPLS:
      raise errors.ConfigError(f"DenseNet bottleneck_impl must be one of {BOTTLENECK_IMPLS}, "
                               f"got {self.bottleneck_impl!r}.")
    if self.bottleneck_impl == "xla":
      fn = partial(_bottleneck, train=train, dtype=self.dtype, want_pre=want_pre)
    else:
      fn = partial(_kernel_bottleneck, train=train, dtype=self.dtype, want_pre=want_pre,
                   impl=self.bottleneck_impl)
    if self.memory_efficient:
      fn = _rematerialized(fn, self.remat)
    args = (tuple(features), tuple(norm1) + tuple(v.value for v in stats1), kernel,
            tuple(norm2) + tuple(v.value for v in stats2))
    if stats is not None and train and not want_pre and self.bottleneck_impl == "xla":
      args += (tuple(stats),)
    out = fn(*args)
    h = out[0]
    if want_pre:
      self.sow("preactivations", "relu1", out[3][0])
      self.sow("preactivations", "relu2", out[3][1])
    if train and not self.is_initializing():
      _update_running_stats(stats1, out[1])
      _update_running_stats(stats2, out[2])
    x = Conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
             kernel_init=_conv_init, dtype=self.dtype, param_dtype=self.param_dtype,
             name="conv2")(h)
    if self.drop_rate > 0:
      x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    return x


# Whether training dense blocks on CPU share each feature map's batch statistics between the
# layers that read it (`DenseBlock`); False: each layer's BatchNorm over its concatenation
# (tools/bench_models.py --variants no-dense-stats).
_CACHE_STATS = True

# Whether memory-efficient dense blocks read their feature maps through `accumulate_here`
# links, one per layer after the first (on the tuple of all feature maps it reads) and one
# before the block's output, so the backward pass sums each feature map's cotangent as it
# goes (tools/bench_memory.py --variants recompute-no-links).
_INCREMENTAL_GRADS = True


class DenseBlock(nn.Module):
  """`num_layers` dense layers; returns the concatenation [N, H, W, C_in + num_layers * k]."""
  num_layers: int
  growth_rate: int
  bn_size: int = 4
  drop_rate: float = 0.0
  memory_efficient: bool = False
  remat: str = "recompute"
  bottleneck_impl: str = "xla"
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    features = [x]
    # Training on CPU (`conv_impl` "auto"): the batch statistics of each feature map are
    # computed once, for every later layer's norm1 (`concat_normalize_relu`), instead of
    # over each layer's concatenation (quadratic in depth). BENCHMARKS.md "Training-step
    # elementwise work on CPU".
    cache = (_CACHE_STATS and train and self.bottleneck_impl == "xla" and conv_lib._use_fast(None)
             and not self.is_mutable_collection("preactivations"))
    stats = [_moments(x, fusable=True)] if cache else None
    for i in range(self.num_layers):
      layer = DenseLayer(self.growth_rate, self.bn_size, self.drop_rate, self.memory_efficient,
                         self.remat, self.bottleneck_impl, self.dtype, self.param_dtype,
                         name=f"denselayer{i + 1}")
      if self.memory_efficient and _INCREMENTAL_GRADS and i > 0:
        features = list(accumulate_here(tuple(features)))
      features.append(layer(features, train, stats))
      if cache:
        stats.append(_moments(features[-1], fusable=True))
    if self.memory_efficient and _INCREMENTAL_GRADS:
      # The block's output too: the transition's input gradient is then split into the
      # feature maps' cotangents before the last layer's backward pass, not during it.
      features = list(accumulate_here(tuple(features)))
    return jnp.concatenate(features, axis=-1)


def _transition_conv(x, norm, kernel, *, dtype):
  """BN (training mode) - ReLU - conv1x1 of a transition as one pure function: (z, (batch
  mean, batch variance))."""
  h, mean, var = batch_norm_fn(x, *norm, True, dtype, relu=True)
  cdt = dtype or jnp.result_type(h, kernel)
  z = conv_general_dilated(h.astype(cdt), kernel.astype(cdt), (1, 1), "VALID",
                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return z, (mean, var)


class Transition(nn.Module):
  """BN-ReLU-Conv1x1(out_features)-AvgPool2x2.

  memory_efficient (training, preactivations not collected): BN + ReLU are recomputed in
  the backward pass (`remat`, as DenseLayer's), so only the block output is kept, not also
  its normalized copy (DenseNet-BC-100 at batch 64: 54 MiB after block 1).
  """
  out_features: int
  dtype: Any = None
  param_dtype: Any = jnp.float32
  memory_efficient: bool = False
  remat: str = "recompute"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if (self.memory_efficient and train
        and not self.is_mutable_collection("preactivations")):
      *norm, stats = _BatchNormVariables(x.shape[-1], self.param_dtype, name="norm")()
      kernel = _ConvKernel((1, 1, x.shape[-1], self.out_features), self.param_dtype,
                           name="conv")()
      fn = partial(_transition_conv, dtype=self.dtype)
      # Only the parameters get the recomputation's cotangent dependence: the block output
      # is stored anyway, and a perturbed copy of it would be one more (54 MiB above).
      fn = _rematerialized(fn, self.remat, perturb=(1, 2))
      z, batch = fn(x, tuple(norm) + tuple(v.value for v in stats), kernel)
      if not self.is_initializing():
        _update_running_stats(stats, batch)
      return nn.avg_pool(z, (2, 2), strides=(2, 2))
    bn = batch_norm(train, "norm", self.dtype, self.param_dtype)
    x = batch_norm_relu(self, bn, x, "relu")
    x = Conv(self.out_features, (1, 1), use_bias=False, kernel_init=_conv_init,
             dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """DenseNet-BC.

  Attributes:
    growth_rate: k, channels added by each dense layer.
    block_config: number of dense layers in each block.
    num_classes: number of logits.
    num_init_features: stem channels (default 2k, as the paper and timm).
    bn_size: bottleneck width factor (bn_size * k channels after conv1).
    compression: theta, transition output channels = floor(theta * C).
    stem: "imagenet" (7x7/2 conv + BN-ReLU + 3x3/2 max pool) or "cifar" (one 3x3 conv).
    drop_rate: dropout before the classifier (timm's `drop_rate`).
    proj_drop_rate: dropout after each dense layer (timm's `proj_drop_rate`; the paper's
      dropout 0.2 for CIFAR without augmentation).
    memory_efficient: rematerialize concat + BN + ReLU + conv1 of each dense layer and BN +
      ReLU of each transition.
    remat: "recompute" (custom VJP, every backend) or "checkpoint" (`jax.checkpoint` with
      the nothing_saveable policy: GPU/TPU only, XLA:CPU undoes it), see DenseLayer.
    bottleneck_impl: "xla", or "auto" / "pallas" / "mosaic_gpu" for the Pallas kernel
      `jaxdl.kernels.dense_bottleneck` (no concatenation in memory), see DenseLayer.
    features_only: return the final feature map after norm5 + ReLU, [N, h, w, C].
    dtype: compute dtype (None = float32); BN statistics stay float32.
    param_dtype: parameter dtype.
  """
  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_classes: int = 1000
  num_init_features: int | None = None
  bn_size: int = 4
  compression: float = 0.5
  stem: str = "imagenet"
  drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  memory_efficient: bool = False
  remat: str = "recompute"
  bottleneck_impl: str = "xla"
  features_only: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: [N, H, W, 3] -> logits [N, num_classes] (float32)."""
    if self.stem not in ("imagenet", "cifar"):
      raise errors.ConfigError(f"DenseNet stem must be 'imagenet' or 'cifar', got "
                               f"{self.stem!r}; pass stem='imagenet' or stem='cifar'.")
    check_images(type(self).__name__, x)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    num_features = self.num_init_features or 2 * self.growth_rate
    x = jnp.asarray(x, self.dtype)
    if self.stem == "imagenet":
      x = Conv(num_features, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
               use_bias=False, kernel_init=_conv_init, name="conv0", **kw)(x)
      x = batch_norm_relu(self, batch_norm(train, "norm0", **kw), x, "relu0")
      x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = Conv(num_features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
               kernel_init=_conv_init, name="conv0", **kw)(x)
    for i, num_layers in enumerate(self.block_config):
      x = DenseBlock(num_layers, self.growth_rate, self.bn_size, self.proj_drop_rate,
                     self.memory_efficient, self.remat, self.bottleneck_impl,
                     name=f"denseblock{i + 1}",
                     **kw)(x, train)
      num_features += num_layers * self.growth_rate
      if i != len(self.block_config) - 1:
        num_features = int(num_features * self.compression)
        x = Transition(num_features, name=f"transition{i + 1}",
                       memory_efficient=self.memory_efficient, remat=self.remat,
                       **kw)(x, train)
    x = batch_norm_relu(self, batch_norm(train, "norm5", **kw), x, "relu5")
    if self.features_only:
      return x
    x = jnp.mean(x, axis=(1, 2))
    if self.drop_rate > 0:
      x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, bias_init=nn.initializers.zeros, name="classifier", **kw)(x)
    return x.astype(jnp.float32)


# ImageNet (timm names; parameter counts equal timm's, see tests/models/test_param_counts.py).
DenseNet121 = partial(DenseNet, growth_rate=32, block_config=(6, 12, 24, 16))
DenseNet169 = partial(DenseNet, growth_rate=32, block_config=(6, 12, 32, 32))
DenseNet201 = partial(DenseNet, growth_rate=32, block_config=(6, 12, 48, 32))
DenseNet161 = partial(DenseNet, growth_rate=48, block_config=(6, 12, 36, 24))
# CIFAR DenseNet-BC (paper Table 2): depth L = 6n + 4 with n bottleneck layers per block.
DenseNetBC100k12 = partial(DenseNet, growth_rate=12, block_config=(16, 16, 16), stem="cifar",
                           num_classes=10)
DenseNetBC250k24 = partial(DenseNet, growth_rate=24, block_config=(41, 41, 41), stem="cifar",
                           num_classes=10)
DenseNetBC190k40 = partial(DenseNet, growth_rate=40, block_config=(31, 31, 31), stem="cifar",
                           num_classes=10)

register("densenet121", DenseNet121, family="densenet")
register("densenet169", DenseNet169, family="densenet")
register("densenet201", DenseNet201, family="densenet")
register("densenet161", DenseNet161, family="densenet")
register("densenet_bc_100_k12", DenseNetBC100k12, family="densenet")
register("densenet_bc_250_k24", DenseNetBC250k24, family="densenet")
register("densenet_bc_190_k40", DenseNetBC190k40, family="densenet")
