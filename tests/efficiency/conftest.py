"""Shared helpers for the efficiency tests: tiny models and randomized variables."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def init(model, shape, seed=0):
  """Random variables for `model` on inputs of `shape`, drawn with numpy (nothing compiles).

  Kernels ~ N(0, 1 / fan_in); BatchNorm statistics and affine terms random (var in [0.5, 2],
  mean and bias in [-0.5, 0.5], scale in [0.5, 1.5]): fresh BN (mean 0, var 1, scale 1, bias
  0) would leave zero-initialised branches inert and map zero padding to zero, whereas random
  values make any wrong halo or padding visible. (model.init would compile Flax's threefry
  key derivations: tens of seconds on 2 cores.)
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  shapes = {k: v for k, v in shapes.items() if k in ("params", "batch_stats")}
  flat = flax.traverse_util.flatten_dict(shapes)
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in sorted(flat.items()):
    name, shp = path[-1], leaf.shape
    if name == "kernel":
      v = rng.normal(size=shp) / np.sqrt(np.prod(shp[:-1]))
    elif name == "var":
      v = rng.uniform(0.5, 2.0, shp)
    elif name == "scale":
      v = rng.uniform(0.5, 1.5, shp)
    else:  # bias, mean
      v = rng.uniform(-0.5, 0.5, shp)
    out[path] = jnp.asarray(v, leaf.dtype)
  return flax.traverse_util.unflatten_dict(out)


class TinyResNet(nn.Module):
  """A ResNet-style net with timm's block names `layer{s}_{b}`: 3x3 stem + BN + ReLU + 3x3/2
  max pool, a basic block, a stride-2 block with a 1x1 conv + BN shortcut, and a stride-2
  block with CIFAR option-A shortcut (strided slice + zero-padded channels)."""
  num_classes: int = 5
  features_only: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: nn.BatchNorm(use_running_average=not train, name=name)
    conv = lambda c, k, s, name: nn.Conv(c, (k, k), (s, s), padding=((k // 2, k // 2),) * 2,
                                         use_bias=False, name=name)
    x = nn.relu(bn("bn1")(conv(8, 3, 1, "conv1")(x)))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for name, c, s, short in (("layer1_0", 8, 1, None), ("layer2_0", 16, 2, "B"),
                              ("layer3_0", 24, 2, "A")):
      x = _Basic(c, s, short, name=name)(x, train)
    if self.features_only:
      return x
    return nn.Dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))


class _Basic(nn.Module):
  features: int
  stride: int
  shortcut: str | None

  @nn.compact
  def __call__(self, x, train):
    bn = lambda name: nn.BatchNorm(use_running_average=not train, name=name)
    y = nn.Conv(self.features, (3, 3), (self.stride,) * 2, padding=((1, 1), (1, 1)),
                use_bias=False, name="conv1")(x)
    y = nn.relu(bn("bn1")(y))
    y = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv2")(y)
    y = bn("bn2")(y)
    if self.shortcut == "B":
      x = bn("downsample_1")(nn.Conv(self.features, (1, 1), (self.stride,) * 2, use_bias=False,
                                     name="downsample_0")(x))
    elif self.shortcut == "A":
      x = x[:, ::self.stride, ::self.stride, :]
      extra = self.features - x.shape[-1]
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return nn.relu(y + x)


@pytest.fixture(scope="session")
def tiny_resnet():
  """The TinyResNet class."""
  return TinyResNet


@pytest.fixture(scope="session")
def init_random():
  """init(model, shape, seed=0) -> variables with randomized BatchNorm."""
  return init
