"""Small convolutional networks for digits, MNIST and CIFAR-10.

Stages of `convs_per_stage` 3x3 convolutions (optionally BatchNorm) with ReLU, each stage
followed by 2x2 max pooling, then global average pooling (or flattening) and dense layers.
ReLU inputs are recorded under `preactivations` (DESIGN.md).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdl.layers import get_initializer, sow_relu
from jaxdl.layers.conv import Conv
from jaxdl.layers.norm import batch_norm, batch_norm_relu
from jaxdl.layers.pool import max_pool
from jaxdl.models.registry import register


class CNN(nn.Module):
  """A plain CNN: [conv3x3 (+BN) + ReLU] x convs_per_stage + maxpool, per stage.

  Attributes:
    num_classes: number of logits.
    features: channels per stage.
    convs_per_stage: 3x3 convolutions in each stage.
    dense: hidden widths of the classifier after pooling.
    use_bn: BatchNorm after every convolution (then convolutions have no bias).
    global_pool: average over space before the classifier (else flatten).
    dropout: dropout rate before the last dense layer (uses the "dropout" rng).
    features_only: return the last feature map [batch, h, w, features[-1]] (before the last
      pooling) instead of logits.
  """
  num_classes: int = 10
  features: Sequence[int] = (32, 64)
  convs_per_stage: int = 1
  dense: Sequence[int] = (128,)
  use_bn: bool = False
  global_pool: bool = False
  dropout: float = 0.0
  features_only: bool = False
  weight_init: str = "he_normal"
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    kinit = get_initializer(self.weight_init)
    for s, ch in enumerate(self.features):
      for c in range(self.convs_per_stage):
        name = f"stage{s}_conv{c}"
        x = Conv(ch, (3, 3), use_bias=not self.use_bn, kernel_init=kinit, dtype=self.dtype,
                 param_dtype=self.param_dtype, name=name)(x)
        if self.use_bn:  # the ReLU fused into the BatchNorm (`batch_norm_relu`)
          bn = batch_norm(train, f"stage{s}_bn{c}", self.dtype, self.param_dtype)
          x = batch_norm_relu(self, bn, x, f"{name}_relu")
        else:
          x = sow_relu(self, x, f"{name}_relu")
      if self.features_only and s == len(self.features) - 1:
        return x
      x = max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = jnp.mean(x, axis=(1, 2)) if self.global_pool else x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.dense):
      x = nn.Dense(width, kernel_init=kinit, dtype=self.dtype, param_dtype=self.param_dtype,
                   name=f"dense_{i}")(x)
      x = sow_relu(self, x, f"dense_{i}_relu")
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="head")(x)
    return x.astype(jnp.float32)


register("cnn", CNN, family="cnn")
register("cnn_small", partial(CNN, features=(16, 32), dense=(64,)), family="cnn")
register("cnn_cifar", partial(CNN, features=(64, 128, 256), convs_per_stage=2, dense=(256,),
                              use_bn=True, global_pool=True), family="cnn")
