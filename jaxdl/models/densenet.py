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
dense layer runs under `jax.checkpoint` with the `nothing_saveable` policy. That part's
activations grow quadratically with depth (layer l reads C0 + l*k channels); it is recomputed
in the backward pass instead of stored, and only the O(k)-channel outputs of each layer stay
live. The forward values are identical.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl import errors
from jaxdl.layers import sow_relu
from jaxdl.layers.norm import batch_norm
from jaxdl.models.registry import register

# timm / torchvision initialize every conv with kaiming_normal_ (fan_in, gain sqrt(2)).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class DenseLayer(nn.Module):
  """One bottleneck layer: new features [N, H, W, k] from the list of earlier features."""
  growth_rate: int
  bn_size: int = 4
  drop_rate: float = 0.0
  memory_efficient: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], train: bool = False) -> jax.Array:
    conv = partial(nn.Conv, use_bias=False, kernel_init=_conv_init, dtype=self.dtype,
                   param_dtype=self.param_dtype)
    bn = partial(batch_norm, train, dtype=self.dtype, param_dtype=self.param_dtype)

    def bottleneck(mdl, feats):
      x = jnp.concatenate(feats, axis=-1) if len(feats) > 1 else feats[0]
      x = sow_relu(mdl, bn(name="norm1")(x), "relu1")
      return conv(self.bn_size * self.growth_rate, (1, 1), name="conv1")(x)

    if self.memory_efficient:
      # Recompute concat + BN + ReLU + conv1 in the backward pass: nothing inside is saved.
      bottleneck = nn.checkpoint(bottleneck, policy=jax.checkpoint_policies.nothing_saveable)
    x = bottleneck(self, tuple(features))
    x = sow_relu(self, bn(name="norm2")(x), "relu2")
    x = conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(x)
    if self.drop_rate > 0:
      x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    return x


class DenseBlock(nn.Module):
  """`num_layers` dense layers; returns the concatenation [N, H, W, C_in + num_layers * k]."""
  num_layers: int
  growth_rate: int
  bn_size: int = 4
  drop_rate: float = 0.0
  memory_efficient: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    features = [x]
    for i in range(self.num_layers):
      features.append(DenseLayer(self.growth_rate, self.bn_size, self.drop_rate,
                                 self.memory_efficient, self.dtype, self.param_dtype,
                                 name=f"denselayer{i + 1}")(features, train))
    return jnp.concatenate(features, axis=-1)


class Transition(nn.Module):
  """BN-ReLU-Conv1x1(out_features)-AvgPool2x2."""
  out_features: int
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = batch_norm(train, "norm", self.dtype, self.param_dtype)(x)
    x = sow_relu(self, x, "relu")
    x = nn.Conv(self.out_features, (1, 1), use_bias=False, kernel_init=_conv_init,
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
    memory_efficient: rematerialize concat + BN + ReLU + conv1 of each dense layer.
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
  features_only: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: [N, H, W, 3] -> logits [N, num_classes] (float32)."""
    if self.stem not in ("imagenet", "cifar"):
      raise errors.ConfigError(f"DenseNet stem must be 'imagenet' or 'cifar', got "
                               f"{self.stem!r}; pass stem='imagenet' or stem='cifar'.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    num_features = self.num_init_features or 2 * self.growth_rate
    x = jnp.asarray(x, self.dtype)
    if self.stem == "imagenet":
      x = nn.Conv(num_features, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                  use_bias=False, kernel_init=_conv_init, name="conv0", **kw)(x)
      x = sow_relu(self, batch_norm(train, "norm0", **kw)(x), "relu0")
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = nn.Conv(num_features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                  kernel_init=_conv_init, name="conv0", **kw)(x)
    for i, num_layers in enumerate(self.block_config):
      x = DenseBlock(num_layers, self.growth_rate, self.bn_size, self.proj_drop_rate,
                     self.memory_efficient, name=f"denseblock{i + 1}", **kw)(x, train)
      num_features += num_layers * self.growth_rate
      if i != len(self.block_config) - 1:
        num_features = int(num_features * self.compression)
        x = Transition(num_features, name=f"transition{i + 1}", **kw)(x, train)
    x = sow_relu(self, batch_norm(train, "norm5", **kw)(x), "relu5")
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
