"""VGG (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", Table 1 configurations A, D, E = vgg11, vgg16, vgg19), as timm's `vgg.py`.

  features_<i>: 3x3 convs with bias + ReLU, 2x2 max pools ('M'), indices as timm's
                nn.Sequential (conv at i, its ReLU at i + 1, a pool takes one index)
  pre_logits:   fc1 = conv 7x7 (512 -> 4096) - ReLU - dropout - fc2 = conv 1x1 - ReLU
                (the paper's first two fully connected layers, as convolutions; inputs
                smaller than 7x7 are first adaptively average-pooled up to 7x7, as timm)
  head:         global average pool - dropout - fc

These are the backbones of part-prototype networks: `features_only=True` returns the output
of `features` (after the last max pool, [N, H/32, W/32, 512]), which is what ProtoPNet puts
its add-on layers on. Every ReLU input is sown under `preactivations`.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers import sow_relu
from jaxdl.layers.conv import Conv
from jaxdl.layers.inputs import check_images
from jaxdl.layers.norm import batch_norm, batch_norm_relu
from jaxdl.layers.pool import max_pool
from jaxdl.models.registry import register

CFGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


def adaptive_avg_pool(x: jax.Array, out_h: int, out_w: int) -> jax.Array:
  """PyTorch's adaptive_avg_pool2d on NHWC: bin i covers [floor(i*H/o), ceil((i+1)*H/o)).

  x: [N, H, W, C] -> [N, out_h, out_w, C]. Shapes are static, so the bins are Python ints.
  """
  n, h, w, c = x.shape

  def bins(size, out):
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]

  rows = [jnp.mean(x[:, a:b], axis=1) for a, b in bins(h, out_h)]           # [N, W, C] each
  x = jnp.stack(rows, axis=1)
  cols = [jnp.mean(x[:, :, a:b], axis=2) for a, b in bins(w, out_w)]
  return jnp.stack(cols, axis=2)


class VGG(nn.Module):
  """VGG with timm's ConvMlp head.

  Attributes:
    cfg: conv widths and 'M' (max pool), e.g. `CFGS["vgg16"]`.
    num_classes: number of logits.
    use_bn: BatchNorm after every conv (the `vgg*_bn` variants; not the default).
    drop_rate: dropout in the head (timm's default 0).
    features_only: return the output of `features`, [N, H/32, W/32, 512].
    dtype / param_dtype: compute and parameter dtypes.
  """
  cfg: Sequence[Any] = CFGS["vgg16"]
  num_classes: int = 1000
  use_bn: bool = False
  drop_rate: float = 0.0
  features_only: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: [N, H, W, 3] -> logits [N, num_classes] (float32)."""
    check_images(type(self).__name__, x)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # timm: kaiming_normal_(fan_out, relu) for convs, N(0, 0.01) for linear layers.
    conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    x = jnp.asarray(x, self.dtype)
    idx = 0
    for v in self.cfg:
      if v == "M":
        x = max_pool(x, (2, 2), strides=(2, 2))
        idx += 1
        continue
      x = Conv(int(v), (3, 3), padding=((1, 1), (1, 1)), kernel_init=conv_init,
               name=f"features_{idx}", **kw)(x)
      idx += 1
      if self.use_bn:  # the ReLU fused into the BatchNorm (`batch_norm_relu`)
        bn = batch_norm(train, f"features_{idx}", **kw)
        idx += 1
        x = batch_norm_relu(self, bn, x, f"features_{idx}")
      else:
        x = sow_relu(self, x, f"features_{idx}")
      idx += 1
    if self.features_only:
      return x
    x = _ConvMlp(self.drop_rate, name="pre_logits", **kw)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    if self.drop_rate > 0:
      x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    x = _Head(self.num_classes, name="head", **kw)(x)
    return x.astype(jnp.float32)


class _ConvMlp(nn.Module):
  drop_rate: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if x.shape[1] < 7 or x.shape[2] < 7:
      x = adaptive_avg_pool(x, max(7, x.shape[1]), max(7, x.shape[2]))
    x = Conv(4096, (7, 7), padding="VALID", name="fc1", **kw)(x)
    x = sow_relu(self, x, "act1")
    if self.drop_rate > 0:
      x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    x = Conv(4096, (1, 1), name="fc2", **kw)(x)
    return sow_relu(self, x, "act2")


class _Head(nn.Module):
  num_classes: int
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                    dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)


register("vgg11", partial(VGG, cfg=CFGS["vgg11"]), family="vgg")
register("vgg13", partial(VGG, cfg=CFGS["vgg13"]), family="vgg")
register("vgg16", partial(VGG, cfg=CFGS["vgg16"]), family="vgg")
register("vgg19", partial(VGG, cfg=CFGS["vgg19"]), family="vgg")
register("vgg11_bn", partial(VGG, cfg=CFGS["vgg11"], use_bn=True), family="vgg")
register("vgg16_bn", partial(VGG, cfg=CFGS["vgg16"], use_bn=True), family="vgg")
register("vgg19_bn", partial(VGG, cfg=CFGS["vgg19"], use_bn=True), family="vgg")
