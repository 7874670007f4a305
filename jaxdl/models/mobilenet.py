"""Inverted-residual networks: MobileNetV2 (Sandler et al. 2018) and MCUNet-style TinyNAS nets.

MobileNetV2 ("MobileNetV2: Inverted Residuals and Linear Bottlenecks", Table 2) exactly as
timm's `efficientnet.py::_gen_mobilenet_v2` (`mobilenetv2_100/050/035`): a 3x3/2 stem, a
depthwise-separable block, 16 inverted-residual blocks (1x1 expand - ReLU6 - kxk depthwise -
ReLU6 - 1x1 linear projection, identity shortcut where stride 1 and channels unchanged), a 1x1
`conv_head` to 1280 channels, global average pooling and a linear classifier. Channels are
scaled by `width_mult` and rounded as timm's `round_channels` (`make_divisible`, divisor 8,
never below 90% of the scaled value); the head keeps max(1280, round(1280 * width_mult)) and
the expansion width is make_divisible(in_channels * expansion).

MCUNet ("MCUNet: Tiny Deep Learning on IoT Devices", Lin et al. 2020; mit-han-lab/mcunet) nets
are the same blocks with per-block kernel sizes (3/5/7), expansions and strides found by
TinyNAS, no `conv_head` (the classifier reads the last block), and a stem of 16-32 channels.
Their block lists are the released `mcunet-*.json` configs as transcribed in public
re-implementations (the JSON files themselves are downloaded at run time by mcunet's
`model_zoo.py` and are not in its repository); parameter counts agree with the mcunet README.

Every network is one `InvertedResidualNet` configured by four per-block lists
(`kernel_sizes`, `expand_ratios`, `channels`, `strides`). Blocks are grouped into stages where
the output channels change, which reproduces timm's stage grouping for MobileNetV2.

Block list (used by `jaxdl.efficiency.patch_apply`'s `split` and by CAM target layers): the
blocks in forward order, block k = the k-th entry of the per-block lists, named
`blocks_{stage}_{index}` (timm's `blocks.{stage}.{index}`). MobileNetV2 has 17 blocks:
  k=0: blocks_0_0 (depthwise separable, stride 1)    k=1-2:   blocks_1_*  (stride 2 first)
  k=3-5: blocks_2_* (stride 2 first)                 k=6-9:   blocks_3_*  (stride 2 first)
  k=10-12: blocks_4_* (stride 1)                     k=13-15: blocks_5_*  (stride 2 first)
  k=16: blocks_6_0 (stride 1)
`patch_apply(..., split=k)` runs the stem and blocks 0..k-1 patch by patch and blocks k.. per
layer. Module names mirror timm so timm weights convert mechanically: `conv_stem`, `bn1`,
`blocks_{i}_{j}/{conv_dw, bn1, conv_pw, bn2}` (expansion 1) or
`blocks_{i}_{j}/{conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3}`, `conv_head`, `bn2`,
`classifier`. Every ReLU6 input is sown under `preactivations`.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl import errors
from jaxdl.layers import activation
from jaxdl.layers.conv import Conv
from jaxdl.layers.inputs import check_images
from jaxdl.layers.norm import batch_norm
from jaxdl.models.registry import register


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None,
                   round_limit: float = 0.9) -> int:
  """timm's `make_divisible`: nearest multiple of `divisor`, not below `round_limit * v`."""
  min_value = min_value or divisor
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < round_limit * v:
    new_v += divisor
  return int(new_v)


def round_channels(channels: int, multiplier: float = 1.0, divisor: int = 8) -> int:
  """timm's `round_channels` (the `round_chs_fn` of `_gen_mobilenet_v2`)."""
  if not multiplier:
    return channels
  return make_divisible(channels * multiplier, divisor)


def expand_rows(rows: Sequence[tuple[int, int, int, int, int]]) -> dict[str, tuple[int, ...]]:
  """Per-block lists from MobileNetV2-style rows (kernel, expansion, channels, repeats, stride).

  The stride applies to the first block of each row, as in the paper's Table 2.
  """
  out = {"kernel_sizes": [], "expand_ratios": [], "channels": [], "strides": []}
  for k, e, c, n, s in rows:
    for i in range(n):
      out["kernel_sizes"].append(k)
      out["expand_ratios"].append(e)
      out["channels"].append(c)
      out["strides"].append(s if i == 0 else 1)
  return {key: tuple(v) for key, v in out.items()}


def stage_indices(channels: Sequence[int]) -> list[tuple[int, int]]:
  """(stage, index in stage) of every block: a new stage starts where the channels change."""
  out, stage, idx = [], 0, 0
  for b, c in enumerate(channels):
    if b > 0 and c != channels[b - 1]:
      stage, idx = stage + 1, 0
    out.append((stage, idx))
    idx += 1
  return out


def _conv_init(groups: int = 1):
  """timm's `_init_weight_goog` for convs: N(0, 2 / fan_out), fan_out = k*k*out/groups."""
  def init(key, shape, dtype=jnp.float32):
    kh, kw, _, out = shape
    fan_out = kh * kw * out // groups
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fan_out)
  return init


def _dense_init(key, shape, dtype=jnp.float32):
  # timm: U(-1/sqrt(fan_out), 1/sqrt(fan_out)) with fan_out = number of classes.
  bound = 1.0 / math.sqrt(shape[1])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _pad(kernel: int, stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
  # timm's get_padding: symmetric ((stride - 1) + (k - 1)) // 2, PyTorch-style.
  p = ((stride - 1) + (kernel - 1)) // 2
  return ((p, p), (p, p))


def _conv(mdl, features, kernel, stride, name, groups=1):
  return Conv(features, (kernel, kernel), strides=(stride, stride),
              padding=_pad(kernel, stride), feature_group_count=groups, use_bias=False,
              kernel_init=_conv_init(groups), dtype=mdl.dtype, param_dtype=mdl.param_dtype,
              name=name)


def _bn(mdl, train, name):
  return batch_norm(train, name, mdl.dtype, mdl.param_dtype)


class DepthwiseSeparable(nn.Module):
  """kxk depthwise - BN - ReLU6 - 1x1 pointwise - BN (+ identity), timm's DepthwiseSeparableConv."""
  out_channels: int
  kernel_size: int = 3
  stride: int = 1
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """x: [N, H, W, C_in] -> [N, H / stride, W / stride, out_channels]."""
    cin = x.shape[-1]
    y = _conv(self, cin, self.kernel_size, self.stride, "conv_dw", groups=cin)(x)
    y = activation(self, _bn(self, train, "bn1")(y), "bn1_act", "relu6")
    y = _conv(self, self.out_channels, 1, 1, "conv_pw")(y)
    y = _bn(self, train, "bn2")(y)
    if self.stride == 1 and cin == self.out_channels:
      y = y + x
    return y


class InvertedResidual(nn.Module):
  """1x1 expand - BN - ReLU6 - kxk depthwise - BN - ReLU6 - 1x1 project - BN (+ identity)."""
  out_channels: int
  kernel_size: int = 3
  stride: int = 1
  expand_ratio: float = 6
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """x: [N, H, W, C_in] -> [N, H / stride, W / stride, out_channels]."""
    cin = x.shape[-1]
    mid = make_divisible(cin * self.expand_ratio)
    y = _conv(self, mid, 1, 1, "conv_pw")(x)
    y = activation(self, _bn(self, train, "bn1")(y), "bn1_act", "relu6")
    y = _conv(self, mid, self.kernel_size, self.stride, "conv_dw", groups=mid)(y)
    y = activation(self, _bn(self, train, "bn2")(y), "bn2_act", "relu6")
    y = _conv(self, self.out_channels, 1, 1, "conv_pwl")(y)
    y = _bn(self, train, "bn3")(y)
    if self.stride == 1 and cin == self.out_channels:
      y = y + x
    return y


class InvertedResidualNet(nn.Module):
  """MobileNetV2 / MCUNet: stem, per-block inverted residuals, optional 1x1 head, classifier.

  Attributes:
    num_classes: number of logits.
    kernel_sizes, expand_ratios, channels, strides: one entry per block (channels before the
      width multiplier). A block with expansion 1 is depthwise separable (no expand conv).
    width_mult: channel multiplier (timm's `channel_multiplier`), rounded by `round_channels`.
    stem_size: stem channels before the multiplier.
    num_features: channels of the 1x1 `conv_head` (None: no head conv, as MCUNet); MobileNetV2
      uses max(num_features, round(num_features * width_mult)).
    drop_rate: dropout before the classifier (the "dropout" rng stream).
    features_only: return the last feature map [N, h, w, C] (after `conv_head`/`bn2` if any,
      timm's `forward_features`) instead of logits.
    dtype / param_dtype: compute and parameter dtypes.
  """
  num_classes: int = 1000
  kernel_sizes: Sequence[int] = ()
  expand_ratios: Sequence[float] = ()
  channels: Sequence[int] = ()
  strides: Sequence[int] = ()
  width_mult: float = 1.0
  stem_size: int = 32
  num_features: int | None = 1280
  drop_rate: float = 0.0
  features_only: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def _check(self):
    n = len(self.channels)
    lists = dict(kernel_sizes=self.kernel_sizes, expand_ratios=self.expand_ratios,
                 strides=self.strides)
    if n == 0:
      raise errors.ConfigError("InvertedResidualNet needs at least one block: set channels, "
                               "kernel_sizes, expand_ratios and strides (one entry per block).")
    for key, v in lists.items():
      if len(v) != n:
        raise errors.ConfigError(f"{key} has {len(v)} entries but channels has {n}: give one "
                                 f"entry per block in each list.")
    for k in self.kernel_sizes:
      if k < 1 or k % 2 == 0:
        raise errors.ConfigError(f"kernel sizes must be odd and positive, got {k}.")

  @nn.compact
  def __call__(self, x, train: bool = False):
    """x: [N, H, W, 3] -> logits [N, num_classes] (float32)."""
    self._check()
    check_images(type(self).__name__, x)
    x = _conv(self, round_channels(self.stem_size, self.width_mult), 3, 2, "conv_stem")(x)
    x = activation(self, _bn(self, train, "bn1")(x), "bn1_act", "relu6")
    stages = stage_indices(self.channels)
    for b, (s, j) in enumerate(stages):
      cout = round_channels(self.channels[b], self.width_mult)
      kw = dict(kernel_size=self.kernel_sizes[b], stride=self.strides[b], dtype=self.dtype,
                param_dtype=self.param_dtype, name=f"blocks_{s}_{j}")
      if self.expand_ratios[b] == 1:
        x = DepthwiseSeparable(cout, **kw)(x, train)
      else:
        x = InvertedResidual(cout, expand_ratio=self.expand_ratios[b], **kw)(x, train)
    if self.num_features:
      head = max(self.num_features, round_channels(self.num_features, self.width_mult))
      x = _conv(self, head, 1, 1, "conv_head")(x)
      x = activation(self, _bn(self, train, "bn2")(x), "bn2_act", "relu6")
    if self.features_only:
      return x
    x = jnp.mean(x, axis=(1, 2))
    if self.drop_rate > 0:
      x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, kernel_init=_dense_init, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="classifier")(x)
    return x.astype(jnp.float32)


# MobileNetV2, Sandler et al. 2018 Table 2 / timm `_gen_mobilenet_v2`:
# (kernel, expansion, channels, repeats, stride).
MOBILENETV2_ROWS = ((3, 1, 16, 1, 1), (3, 6, 24, 2, 2), (3, 6, 32, 3, 2), (3, 6, 64, 4, 2),
                    (3, 6, 96, 3, 1), (3, 6, 160, 3, 2), (3, 6, 320, 1, 1))
MobileNetV2 = partial(InvertedResidualNet, **expand_rows(MOBILENETV2_ROWS))


def _mcunet(blocks, stem):
  """Per-block (kernel, expansion, channels, stride) tuples -> InvertedResidualNet partial."""
  k, e, c, s = zip(*blocks)
  return partial(InvertedResidualNet, kernel_sizes=k, expand_ratios=e, channels=c, strides=s,
                 stem_size=stem, num_features=None)


# TinyNAS block lists (kernel, expansion, channels, stride) of the released MCUNet models.
# ImageNet: mcunet-in0 (10fps, r48), in1 (5fps, r96), in2 (256kB, r160), in3 (320kB, r176),
# in4 (512kB, r160); VWW: mcunet-vww2 (320kB, r144). Source: third-party transcriptions of
# mit-han-lab's `mcunet-*.json` (see the module docstring); resolutions in MCUNET_RESOLUTION.
MCUNET_BLOCKS = {
    "mcunet_in0": (24, [(3, 1, 16, 1), (5, 4, 16, 2), (3, 3, 16, 1), (3, 4, 16, 1),
                        (7, 5, 24, 2), (5, 4, 24, 1), (5, 5, 24, 1), (7, 5, 48, 2),
                        (5, 4, 48, 1), (3, 5, 56, 1), (5, 4, 56, 1), (3, 5, 56, 1),
                        (3, 6, 112, 2), (5, 4, 112, 1), (3, 6, 192, 1)]),
    "mcunet_in1": (16, [(3, 1, 8, 1), (3, 4, 16, 2), (3, 3, 16, 1), (7, 3, 24, 2),
                        (3, 5, 24, 1), (3, 5, 40, 2), (7, 4, 40, 1), (5, 4, 48, 1),
                        (3, 3, 48, 1), (3, 4, 48, 1), (7, 5, 96, 2), (5, 4, 96, 1),
                        (5, 4, 96, 1), (3, 6, 160, 1)]),
    "mcunet_in2": (16, [(3, 1, 8, 1), (5, 3, 16, 2), (7, 6, 16, 1), (3, 5, 16, 1),
                        (5, 5, 16, 1), (3, 5, 24, 2), (7, 6, 24, 1), (5, 6, 24, 1),
                        (7, 4, 40, 2), (5, 5, 40, 1), (3, 5, 48, 1), (5, 5, 48, 1),
                        (3, 4, 48, 1), (5, 6, 96, 2), (5, 4, 96, 1), (5, 3, 96, 1),
                        (3, 4, 96, 1), (5, 5, 160, 1)]),
    "mcunet_in3": (16, [(3, 1, 8, 1), (7, 3, 16, 2), (3, 5, 16, 1), (7, 5, 16, 1),
                        (5, 4, 16, 1), (5, 5, 24, 2), (5, 5, 24, 1), (5, 5, 24, 1),
                        (3, 5, 40, 2), (7, 6, 40, 1), (5, 4, 40, 1), (5, 5, 48, 1),
                        (7, 5, 48, 1), (3, 5, 48, 1), (3, 6, 96, 2), (7, 5, 96, 1),
                        (3, 4, 96, 1), (7, 5, 160, 1)]),
    "mcunet_in4": (32, [(3, 1, 16, 1), (7, 3, 24, 2), (3, 5, 24, 1), (5, 4, 24, 1),
                        (7, 5, 40, 2), (3, 4, 40, 1), (7, 4, 40, 1), (7, 3, 80, 2),
                        (3, 3, 80, 1), (7, 3, 80, 1), (3, 4, 96, 1), (5, 3, 96, 1),
                        (5, 3, 96, 1), (7, 4, 192, 2), (7, 3, 192, 1), (5, 3, 192, 1),
                        (5, 4, 320, 1)]),
    "mcunet_vww2": (16, [(3, 1, 8, 1), (3, 3, 16, 2), (3, 5, 16, 1), (5, 6, 16, 1),
                         (3, 3, 16, 1), (7, 5, 24, 2), (5, 4, 24, 1), (3, 4, 24, 1),
                         (7, 6, 24, 1), (3, 6, 40, 2), (7, 6, 40, 1), (5, 4, 40, 1),
                         (3, 5, 40, 1), (5, 5, 48, 1), (5, 3, 48, 1), (3, 4, 48, 1),
                         (5, 3, 48, 1), (3, 4, 96, 2), (5, 5, 96, 1), (5, 4, 96, 1),
                         (3, 4, 96, 1), (3, 5, 160, 1)]),
}
MCUNET_RESOLUTION = {"mcunet_in0": 48, "mcunet_in1": 96, "mcunet_in2": 160, "mcunet_in3": 176,
                     "mcunet_in4": 160, "mcunet_vww2": 144}

register("mobilenetv2_100", MobileNetV2, family="mobilenet")
register("mobilenetv2_050", partial(MobileNetV2, width_mult=0.5), family="mobilenet")
register("mobilenetv2_035", partial(MobileNetV2, width_mult=0.35), family="mobilenet")
for _name, (_stem, _blocks) in MCUNET_BLOCKS.items():
  # Visual Wake Words is a 2-class task (person / no person).
  _classes = {"num_classes": 2} if "vww" in _name else {}
  register(_name, partial(_mcunet(_blocks, _stem), **_classes), family="mobilenet")
