"""RDNet (Kim et al. 2024, "DenseNets Reloaded: Paradigm Shift Beyond ResNets and ViTs").

A DenseNet whose dense layers are ConvNeXt-like "feature mixers" (paper Sec. 4, Fig. 3) and
whose stages are short (3 blocks) with wide growth rates, as in the authors' code
(naver-ai/rdnet) and timm's `rdnet.py`:

  stem:        conv 4x4/4 (patchify) - LayerNorm2d
  stage i:     [transition: LN - conv 2x2/2 if downsampling else 1x1, to int(C * 0.5 / 8) * 8]
               then 3 dense blocks, each adding `growth_rates[i]` channels:
               concat - dwconv 7x7 - LN - conv1x1 to int(C_in * 4 / 8) * 8 - GELU
               - conv1x1 to growth rate [- effective SE with hard sigmoid (ESE blocks)]
               - layer scale (init 1e-6) - drop path
  head:        global average pool - LayerNorm - fc   (timm's NormMlpClassifierHead)

Module names mirror timm's state-dict keys with index paths joined by "_" (`stem_0`,
`dense_stages_3_2/dense_block1/layers/layers_0`, `head/fc`), so `load_timm_state_dict`
maps them mechanically. Block list for analysis code: `stem_*`, then `dense_stages_0` ..
`dense_stages_{S-1}` (downsampling at the stages in `is_downsample_block`), then `head`.
Drop-path rates grow linearly from 0 to `drop_path_rate` over all blocks (timm).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import errors
from jaxdl.layers import activation
from jaxdl.layers import activations
from jaxdl.layers import remat
from jaxdl.layers import conv as conv_lib
from jaxdl.layers.conv import Conv
from jaxdl.layers.depthwise import DepthwiseConv
from jaxdl.layers.inputs import check_images
from jaxdl.layers.drop_path import DropPath
from jaxdl.layers.norm import layer_norm
from jaxdl.models.registry import register

_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # kaiming_normal_


def drop_path_rates(drop_path_rate: float, num_blocks_list: Sequence[int]
                    ) -> list[tuple[float, ...]]:
  """Per stage, the drop-path rate of each block: linspace(0, rate, total blocks), split."""
  dp = np.linspace(0.0, drop_path_rate, sum(num_blocks_list))
  ends = np.cumsum(num_blocks_list)
  return [tuple(float(r) for r in part) for part in np.split(dp, ends[:-1])]


class EffectiveSE(nn.Module):
  """Effective squeeze-excitation (Lee & Park 2020, CenterMask): x * hsigmoid(fc(mean(x)))."""
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = Conv(x.shape[-1], (1, 1), kernel_init=_conv_init, dtype=self.dtype,
             param_dtype=self.param_dtype, name="fc")(s)
    return x * jax.nn.hard_sigmoid(s)


def _gelu_conv(lhs, rhs, *args, **kwargs):
  """conv(gelu(lhs), rhs) keeping only lhs (the GELU's input) for the backward pass, which
  recomputes gelu(lhs) where the kernel gradient needs it (`recompute_in_backward`; the
  recomputed forward convolution is unused and compiled away). The expanded activation (4x
  the block's channels) is then stored once, not twice: rdnet_tiny's training step at batch
  8 needs 1,428 MiB of XLA:CPU temporaries instead of 2,092 at the same CPU time, and fewer
  fresh pages per step (BENCHMARKS.md "RDNet training on CPU: CPU time, kernel time and
  memory"). CPU formulations only: not yet measured on GPUs."""
  f = lambda h, k: conv_lib.conv_general_dilated(activations.gelu(h), k, *args, **kwargs)
  return remat.recompute_in_backward(f)(lhs, rhs)


# Whether FeatureMixer stores the GELU's input only (True) or also its output (False), where
# the CPU formulations apply (tools/bench_models.py --variants gelu-stored).
_RECOMPUTE_GELU = True

# Whether FeatureMixer stores its depthwise sum (`conv_lib.compute_once`) where the CPU
# formulations apply (tools/bench_models.py --variants dw-recomputed switches it off).
_COMPUTE_DW_ONCE = True


class FeatureMixer(nn.Module):
  """timm's `Block` / `BlockESE` (a Sequential, hence the `layers_<index>` names)."""
  inter_features: int
  out_features: int
  ese: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32
  norm_fast_variance: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(kernel_init=_conv_init, dtype=self.dtype, param_dtype=self.param_dtype)
    x = DepthwiseConv(7, name="layers_0", **kw)(x)  # Fast on CPU too; nn.Conv's params.
    if _COMPUTE_DW_ONCE:  # on CPU, the 7x7 sum stored, not recomputed in the LN's loops
      x = conv_lib.compute_once(x)
    x = conv_lib.loop_fusion_boundary(x)  # on CPU, keeps the 7x7 sum out of the LN's fusion
    x = layer_norm("layers_1", self.dtype, self.param_dtype,
                   fast_variance=self.norm_fast_variance)(x)
    x = conv_lib.loop_fusion_boundary(x)  # and the 1x1 dot out of it (XLA's dot is faster)
    x = Conv(self.inter_features, (1, 1), name="layers_2", **kw)(x)
    if _RECOMPUTE_GELU and conv_lib.uses_cpu_formulations():
      self.sow("preactivations", "gelu", x)
      x = nn.Conv(self.out_features, (1, 1), conv_general_dilated=_gelu_conv, name="layers_4",
                  **kw)(x)
    else:
      x = activation(self, x, "gelu", "gelu")
      x = Conv(self.out_features, (1, 1), name="layers_4", **kw)(x)
    if self.ese:
      x = EffectiveSE(self.dtype, self.param_dtype, name="layers_5")(x)
    return x


class RDNetBlock(nn.Module):
  """One dense block: new features [N, H, W, growth_rate] from the list of earlier ones."""
  growth_rate: int
  bottleneck_width_ratio: float = 4.0
  ese: bool = False
  ls_init_value: float = 1e-6
  drop_path_rate: float = 0.0
  drop_rate: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32
  norm_fast_variance: bool = False

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], train: bool = False) -> jax.Array:
    x = jnp.concatenate(features, axis=-1) if len(features) > 1 else features[0]
    inter = int(x.shape[-1] * self.bottleneck_width_ratio / 8) * 8
    x = FeatureMixer(inter, self.growth_rate, self.ese, self.dtype, self.param_dtype,
                     self.norm_fast_variance, name="layers")(x)
    if self.ls_init_value > 0:
      gamma = self.param("gamma", nn.initializers.constant(self.ls_init_value),
                         (self.growth_rate,), self.param_dtype)
      x = x * jnp.asarray(gamma, x.dtype)
    x = DropPath(self.drop_path_rate)(x, train)
    if self.drop_rate > 0:
      x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    return x


class DenseStage(nn.Module):
  """`num_blocks` RDNet blocks densely concatenated; returns all features concatenated."""
  num_blocks: int
  growth_rate: int
  drop_path_rates: Sequence[float]
  ese: bool = False
  bottleneck_width_ratio: float = 4.0
  ls_init_value: float = 1e-6
  drop_rate: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32
  norm_fast_variance: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    features = [x]
    for i in range(self.num_blocks):
      features.append(RDNetBlock(self.growth_rate, self.bottleneck_width_ratio, self.ese,
                                 self.ls_init_value, self.drop_path_rates[i], self.drop_rate,
                                 self.dtype, self.param_dtype, self.norm_fast_variance,
                                 name=f"dense_block{i}")(features, train))
    return jnp.concatenate(features, axis=-1)


class NormHead(nn.Module):
  """timm's NormMlpClassifierHead without hidden layer: pool - LayerNorm - dropout - fc."""
  num_classes: int
  drop_rate: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32
  norm_fast_variance: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = jnp.mean(x, axis=(1, 2))
    x = layer_norm("norm", self.dtype, self.param_dtype,
                   fast_variance=self.norm_fast_variance)(x)
    if self.drop_rate > 0:
      x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, bias_init=nn.initializers.zeros, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="fc")(x)


class RDNet(nn.Module):
  """RDNet.

  Attributes:
    num_classes: number of logits.
    num_init_features: stem channels.
    growth_rates: channels added by each block, per stage.
    num_blocks_list: blocks per stage.
    is_downsample_block: per stage, whether its transition halves the resolution (the
      first entry is ignored: stage 0 has no transition).
    block_types: per stage, "Block" or "BlockESE".
    bottleneck_width_ratio: expansion of the 1x1 conv inside a block.
    transition_compression_ratio: transition output = int(C * ratio / 8) * 8.
    ls_init_value: layer-scale initial value (0 disables layer scale).
    patch_size: stem patch size.
    drop_rate: dropout before the classifier.
    proj_drop_rate: dropout after each block.
    drop_path_rate: maximal stochastic-depth rate (linear over blocks).
    features_only: return the last feature map [N, h, w, C] (before pooling and head).
    dtype: compute dtype (None = float32); LayerNorm statistics stay float32.
    param_dtype: parameter dtype.
    norm_fast_variance: LayerNorm variance as E[x^2] - mean^2 (flax's default) instead of
      E[(x - mean)^2] (PyTorch's, the default). XLA:GPU compiles the train step ~5x faster
      with it: the two-pass form makes XLA build Triton normalization fusions that its
      fusion pass then spends minutes re-tiling (rdnet_tiny bf16 batch 64 for an H200, no
      autotuning: 109 s -> 20 s; BENCHMARKS.md "RDNet's compile time on GPUs"). Its effect
      on GPU step time is not yet measured, so the default stays PyTorch's form.
  """
  num_classes: int = 1000
  num_init_features: int = 64
  growth_rates: Sequence[int] = (64, 104, 128, 128, 128, 128, 224)
  num_blocks_list: Sequence[int] = (3,) * 7
  is_downsample_block: Sequence[bool] = (False, True, True, False, False, False, True)
  block_types: Sequence[str] = ("Block",) * 2 + ("BlockESE",) * 5
  bottleneck_width_ratio: float = 4.0
  transition_compression_ratio: float = 0.5
  ls_init_value: float = 1e-6
  patch_size: int = 4
  drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  features_only: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32
  norm_fast_variance: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: [N, H, W, 3] -> logits [N, num_classes] (float32)."""
    check_images(type(self).__name__, x)
    lengths = {len(self.growth_rates), len(self.num_blocks_list),
               len(self.is_downsample_block), len(self.block_types)}
    if len(lengths) != 1:
      raise errors.ConfigError(
          "RDNet growth_rates, num_blocks_list, is_downsample_block and block_types must have "
          "one entry per stage; give them the same length.")
    bad = [b for b in self.block_types if b.lower() not in ("block", "blockese")]
    if bad:
      raise errors.ConfigError(f"unknown RDNet block type {bad[0]!r}; use 'Block' or "
                               "'BlockESE'.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    p = self.patch_size
    x = jnp.asarray(x, self.dtype)
    x = Conv(self.num_init_features, (p, p), strides=(p, p), padding="VALID",
             kernel_init=_conv_init, name="stem_0", **kw)(x)
    x = layer_norm("stem_1", **kw, fast_variance=self.norm_fast_variance)(x)
    dp = drop_path_rates(self.drop_path_rate, self.num_blocks_list)
    num_features = self.num_init_features
    for i, growth in enumerate(self.growth_rates):
      j = 0  # index inside timm's per-stage nn.Sequential
      if i > 0:
        num_features = int(num_features * self.transition_compression_ratio / 8) * 8
        k = 2 if self.is_downsample_block[i] else 1
        x = layer_norm(f"dense_stages_{i}_0", **kw, fast_variance=self.norm_fast_variance)(x)
        x = Conv(num_features, (k, k), strides=(k, k), padding="VALID",
                 kernel_init=_conv_init, name=f"dense_stages_{i}_1", **kw)(x)
        j = 2
      n = self.num_blocks_list[i]
      x = DenseStage(n, growth, dp[i],
                     ese=self.block_types[i].lower() == "blockese",
                     bottleneck_width_ratio=self.bottleneck_width_ratio,
                     ls_init_value=self.ls_init_value, drop_rate=self.proj_drop_rate,
                     norm_fast_variance=self.norm_fast_variance,
                     name=f"dense_stages_{i}_{j}", **kw)(x, train)
      num_features += n * growth
    if self.features_only:
      return x
    x = NormHead(self.num_classes, self.drop_rate, name="head",
                 norm_fast_variance=self.norm_fast_variance, **kw)(x, train)
    return x.astype(jnp.float32)


RDNetTiny = partial(
    RDNet, num_init_features=64, growth_rates=(64, 104) + (128,) * 4 + (224,),
    num_blocks_list=(3,) * 7,
    is_downsample_block=(False, True, True, False, False, False, True),
    block_types=("Block",) * 2 + ("BlockESE",) * 5)
RDNetSmall = partial(
    RDNet, num_init_features=72, growth_rates=(64, 128) + (128,) * 7 + (240,) * 2,
    num_blocks_list=(3,) * 11,
    is_downsample_block=(False, True, True) + (False,) * 6 + (True, False),
    block_types=("Block",) * 2 + ("BlockESE",) * 9)
RDNetBase = partial(
    RDNet, num_init_features=120, growth_rates=(96, 128) + (168,) * 7 + (336,) * 2,
    num_blocks_list=(3,) * 11,
    is_downsample_block=(False, True, True) + (False,) * 6 + (True, False),
    block_types=("Block",) * 2 + ("BlockESE",) * 9)
RDNetLarge = partial(
    RDNet, num_init_features=144, growth_rates=(128, 192) + (256,) * 8 + (360,) * 2,
    num_blocks_list=(3,) * 12,
    is_downsample_block=(False, True, True) + (False,) * 7 + (True, False),
    block_types=("Block",) * 2 + ("BlockESE",) * 10)

register("rdnet_tiny", RDNetTiny, family="rdnet")
register("rdnet_small", RDNetSmall, family="rdnet")
register("rdnet_base", RDNetBase, family="rdnet")
register("rdnet_large", RDNetLarge, family="rdnet")
