"""Residual networks (He et al. 2016a, "Deep Residual Learning for Image Recognition";
He et al. 2016b, "Identity Mappings in Deep Residual Networks").

Three families:

* `resnet18/34/50`: the ImageNet ResNets of 2016a Table 1, as timm's `resnet.py` (v1.5:
  the stride of a bottleneck sits on its 3x3 conv). Names mirror timm's state-dict keys:
  conv1 - bn1 - ReLU - maxpool, then `layer{s}_{b}/{conv1, bn1, conv2, bn2[, conv3, bn3],
  downsample_0, downsample_1}` for stage s = 1..4 and block b, then global pool - `fc`.
* `resnet20/56`: the CIFAR ResNets of 2016a Sec. 4.2: a 3x3 conv with 16 channels, three
  stages of n = (depth - 2) / 6 basic blocks with 16/32/64 channels (stride 2 at the start of
  stages 2 and 3), global pool, fc. Shortcuts are option A (parameter-free: subsample by 2
  and zero-pad the new channels), 0.27M / 0.85M parameters.
* `preact_resnet18`: the pre-activation ResNet-18 of 2016b for 32x32 inputs, as used by the
  grokking experiments (Humayun et al. 2024, AhmedImtiazPrio/grok-adversarial): 3x3 stem,
  blocks BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut (a 1x1 conv on the pre-activated input
  where the shape changes), no final BN, global pool, `linear`. `width` sets the first
  stage's channels (stages: width, 2w, 4w, 8w) and `use_bn=False` drops every BatchNorm.

Every ReLU input is sown under `preactivations`. `features_only=True` returns the output of
the last stage [N, h, w, C] (before pooling). Block list for analysis code: `layer1_*` ..
`layer{S}_*` in order.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl import errors
from jaxdl.layers import sow_relu
from jaxdl.layers.conv import Conv
from jaxdl.layers.inputs import check_images
from jaxdl.layers.norm import batch_norm, batch_norm_relu
from jaxdl.layers.pool import max_pool
from jaxdl.models.registry import register

# timm: kaiming_normal_(mode="fan_out", nonlinearity="relu").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features, kernel, stride=1, name=None, dtype=None, param_dtype=jnp.float32,
          kernel_init=_conv_init):
  """Bias-free conv with PyTorch's symmetric padding kernel // 2."""
  p = kernel // 2
  return Conv(features, (kernel, kernel), strides=(stride, stride),
              padding=((p, p), (p, p)), use_bias=False, kernel_init=kernel_init,
              dtype=dtype, param_dtype=param_dtype, name=name)


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU. Shortcut "B": 1x1 conv + BN where the
  shape changes (timm); "A": subsample and zero-pad channels (CIFAR ResNets)."""
  features: int
  stride: int = 1
  shortcut: str = "B"
  zero_init_last: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    last_init = nn.initializers.zeros if self.zero_init_last else nn.initializers.ones
    y = _conv(self.features, 3, self.stride, "conv1", **kw)(x)
    y = batch_norm_relu(self, batch_norm(train, "bn1", **kw), y, "act1")
    y = _conv(self.features, 3, 1, "conv2", **kw)(y)
    y = batch_norm(train, "bn2", scale_init=last_init, **kw)(y)
    return sow_relu(self, y + _shortcut(self, x, self.features, self.stride, self.shortcut,
                                        train), "act2")


class Bottleneck(nn.Module):
  """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN + shortcut, ReLU."""
  features: int
  stride: int = 1
  shortcut: str = "B"
  zero_init_last: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    last_init = nn.initializers.zeros if self.zero_init_last else nn.initializers.ones
    y = _conv(self.features, 1, 1, "conv1", **kw)(x)
    y = batch_norm_relu(self, batch_norm(train, "bn1", **kw), y, "act1")
    y = _conv(self.features, 3, self.stride, "conv2", **kw)(y)
    y = batch_norm_relu(self, batch_norm(train, "bn2", **kw), y, "act2")
    y = _conv(self.features * 4, 1, 1, "conv3", **kw)(y)
    y = batch_norm(train, "bn3", scale_init=last_init, **kw)(y)
    return sow_relu(self, y + _shortcut(self, x, self.features * 4, self.stride,
                                        self.shortcut, train), "act3")


def _shortcut(mdl: nn.Module, x, out_features, stride, kind, train):
  """The identity, or (where the shape changes) option A or a 1x1 conv + BN (option B).

  Called inside `mdl`'s compact `__call__`, so the layers it creates belong to `mdl`.
  """
  if stride == 1 and x.shape[-1] == out_features:
    return x
  if kind == "A":
    x = x[:, ::stride, ::stride, :]
    extra = out_features - x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  kw = dict(dtype=mdl.dtype, param_dtype=mdl.param_dtype)
  x = _conv(out_features, 1, stride, "downsample_0", **kw)(x)
  return batch_norm(train, "downsample_1", **kw)(x)


class ResNet(nn.Module):
  """ImageNet-style ResNet (7x7/2 stem + max pool, four stages of 64..512 base channels).

  Attributes:
    block: BasicBlock or Bottleneck.
    stage_sizes: blocks per stage.
    num_classes: number of logits.
    stem: "imagenet" (7x7/2 conv + max pool) or "cifar" (3x3 conv, no pool).
    base_width: channels of the first stage (doubled per stage).
    zero_init_last: the last BN scale of every block starts at 0 (timm's default).
    features_only: return the last stage's output [N, h, w, C].
    dtype / param_dtype: compute and parameter dtypes (BN statistics stay float32).
  """
  block: Any = BasicBlock
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  num_classes: int = 1000
  stem: str = "imagenet"
  base_width: int = 64
  zero_init_last: bool = True
  features_only: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: [N, H, W, 3] -> logits [N, num_classes] (float32)."""
    check_images(type(self).__name__, x)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = jnp.asarray(x, self.dtype)
    if self.stem == "imagenet":
      x = _conv(self.base_width, 7, 2, "conv1", **kw)(x)
    elif self.stem == "cifar":
      x = _conv(self.base_width, 3, 1, "conv1", **kw)(x)
    else:
      raise errors.ConfigError(f"ResNet stem must be 'imagenet' or 'cifar', got {self.stem!r}.")
    x = batch_norm_relu(self, batch_norm(train, "bn1", **kw), x, "act1")
    if self.stem == "imagenet":
      x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for s, n in enumerate(self.stage_sizes):
      for b in range(n):
        stride = 2 if s > 0 and b == 0 else 1
        x = self.block(self.base_width * 2 ** s, stride, "B", self.zero_init_last,
                       name=f"layer{s + 1}_{b}", **kw)(x, train)
    if self.features_only:
      return x
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="fc", **kw)(x).astype(jnp.float32)


class CifarResNet(nn.Module):
  """He et al. (2016a) Sec. 4.2 CIFAR ResNet: 6n + 2 layers, 16/32/64 channels, option A.

  Attributes:
    depth: 6n + 2 (20, 32, 44, 56, 110, ...).
    num_classes: number of logits.
    shortcut: "A" (paper: zero-padding identity) or "B" (1x1 conv + BN).
    features_only: return the last stage's output [N, 8, 8, 64] for 32x32 inputs.
  """
  depth: int = 20
  num_classes: int = 10
  shortcut: str = "A"
  features_only: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if (self.depth - 2) % 6 != 0 or self.depth < 8:
      raise errors.ConfigError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110), "
                               f"got {self.depth}.")
    if self.shortcut not in ("A", "B"):
      raise errors.ConfigError(f"shortcut must be 'A' or 'B', got {self.shortcut!r}.")
    check_images(type(self).__name__, x)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    n = (self.depth - 2) // 6
    x = jnp.asarray(x, self.dtype)
    x = _conv(16, 3, 1, "conv1", **kw)(x)
    x = batch_norm_relu(self, batch_norm(train, "bn1", **kw), x, "act1")
    for s in range(3):
      for b in range(n):
        x = BasicBlock(16 * 2 ** s, 2 if s > 0 and b == 0 else 1, self.shortcut,
                       zero_init_last=False, name=f"layer{s + 1}_{b}", **kw)(x, train)
    if self.features_only:
      return x
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="fc", **kw)(x).astype(jnp.float32)


class PreActBlock(nn.Module):
  """[BN]-ReLU-conv3x3(stride)-[BN]-ReLU-conv3x3 + shortcut (He et al. 2016b, Fig. 1b).

  The shortcut is a bias-free 1x1 conv applied to the pre-activated input where the shape
  changes, otherwise the identity on the raw input (as the grokking reference code).
  """
  features: int
  stride: int = 1
  use_bn: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = batch_norm(train, "bn1", **kw)(x) if self.use_bn else x
    y = sow_relu(self, y, "act1")
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = _conv(self.features, 1, self.stride, "shortcut_0", **kw)(y)
    else:
      shortcut = x
    y = _conv(self.features, 3, self.stride, "conv1", **kw)(y)
    y = batch_norm(train, "bn2", **kw)(y) if self.use_bn else y
    y = sow_relu(self, y, "act2")
    y = _conv(self.features, 3, 1, "conv2", **kw)(y)
    return y + shortcut


class PreActResNet(nn.Module):
  """Pre-activation ResNet for 32x32 inputs with a width factor and optional BatchNorm.

  Attributes:
    stage_sizes: blocks per stage ((2, 2, 2, 2) = ResNet-18).
    width: channels of the first stage (64 standard; the grokking experiments use 16).
    use_bn: BatchNorm in the blocks (False for the grokking experiments: no batch_stats).
    num_classes: number of logits.
    features_only: return the last stage's output [N, h, w, 8 * width].
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  use_bn: bool = True
  num_classes: int = 10
  features_only: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_images(type(self).__name__, x)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = jnp.asarray(x, self.dtype)
    x = _conv(self.width, 3, 1, "conv1", **kw)(x)
    for s, n in enumerate(self.stage_sizes):
      for b in range(n):
        x = PreActBlock(self.width * 2 ** s, 2 if s > 0 and b == 0 else 1, self.use_bn,
                        name=f"layer{s + 1}_{b}", **kw)(x, train)
    if self.features_only:
      return x
    # The reference pools with avg_pool2d(4) on the 4x4 map of a 32x32 input: a global mean.
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="linear", **kw)(x).astype(jnp.float32)


ResNet18 = partial(ResNet, block=BasicBlock, stage_sizes=(2, 2, 2, 2))
ResNet34 = partial(ResNet, block=BasicBlock, stage_sizes=(3, 4, 6, 3))
ResNet50 = partial(ResNet, block=Bottleneck, stage_sizes=(3, 4, 6, 3))

register("resnet18", ResNet18, family="resnet")
register("resnet34", ResNet34, family="resnet")
register("resnet50", ResNet50, family="resnet")
register("resnet20", partial(CifarResNet, depth=20), family="resnet")
register("resnet56", partial(CifarResNet, depth=56), family="resnet")
register("preact_resnet18", partial(PreActResNet, stage_sizes=(2, 2, 2, 2)), family="resnet")
