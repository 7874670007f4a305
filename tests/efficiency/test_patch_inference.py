"""patch_apply equals the layer-by-layer forward pass (MCUNetV2 patch-based inference)."""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import errors, models
from jaxdl.efficiency import mac_overhead, patch_apply
from jaxdl.efficiency import graph as G
from jaxdl.efficiency import patch_inference as P
from jaxdl.models.mobilenet import InvertedResidualNet

# An MCUNet-style net: mixed 3/5/7 kernels, a depthwise-separable first block with identity
# shortcut, stride-2 blocks and residual blocks. Blocks 0..4.
TINY_IR = partial(InvertedResidualNet, num_classes=5, kernel_sizes=(3, 5, 3, 7, 3),
                  expand_ratios=(1, 3, 2, 3, 2), channels=(8, 8, 8, 16, 16),
                  strides=(1, 2, 1, 2, 1), stem_size=8, num_features=16)


def _check(init, model, shape, split, num_patches, seed=0):
  variables = init(model, shape, seed)
  x = jax.random.normal(jax.random.key(seed + 1), shape)
  ref = jax.jit(partial(model.apply, train=False))(variables, x)
  out = jax.jit(partial(patch_apply, model, split=split, num_patches=num_patches))(variables, x)
  assert out.shape == ref.shape
  assert float(jnp.abs(ref).max()) > 0.1   # a non-trivial output
  np.testing.assert_array_less(float(jnp.abs(out - ref).max()), 1e-5)


@pytest.mark.parametrize("hw, split, num_patches", [
    ((32, 32), 2, 2),      # stage output 8x8, even 4x4 patches
    ((30, 30), 3, 3),      # 8x8 in 3 patches of 3: uneven, last patch shifted
    ((33, 33), 4, (2, 3)),  # odd sizes, 5x5 stage output, a 2x3 grid
    ((28, 36), 5, 2),      # non-square image, every block patched
    ((32, 32), 0, 3),      # the stem alone, 16x16 in 3 patches
])
def test_inverted_residual_features_equal_full_pass(init_random, hw, split, num_patches):
  # features_only compares every position of the last feature map, not a pooled summary.
  _check(init_random, TINY_IR(features_only=True), (2,) + hw + (3,), split, num_patches)


def test_mobilenetv2_logits_equal_full_pass(init_random):
  _check(init_random, models.create("mobilenetv2_035", num_classes=10), (1, 40, 40, 3), split=4,
         num_patches=2)


def test_mcunet_logits_equal_full_pass(init_random):
  # mcunet-in0 at its 48x48 resolution: 6x6 stage output in 4 uneven patches.
  _check(init_random, models.create("mcunet_in0", num_classes=10), (1, 48, 48, 3), split=5,
         num_patches=4)


@pytest.mark.parametrize("hw, split, num_patches", [((32, 32), 2, 2), ((27, 27), 1, 3)])
def test_resnet_style_features_equal_full_pass(init_random, tiny_resnet, hw, split,
                                              num_patches):
  # Max pooling (-inf borders), 1x1/2 downsample shortcut, option-A strided slice + channel pad.
  _check(init_random, tiny_resnet(features_only=True), (2,) + hw + (3,), split, num_patches)


@pytest.mark.parametrize("name, kw, hw, split, n", [
    ("resnet18", dict(base_width=8), (48, 48), 3, 3),
    ("resnet20", {}, (24, 24), 4, 3),
])
def test_zoo_resnets_equal_full_pass(init_random, name, kw, hw, split, n):
  if name not in models.list_models():
    pytest.skip(f"{name} is not registered on this branch yet (model-zoo merge)")
  _check(init_random, models.create(name, num_classes=10, **kw), (1,) + hw + (3,), split, n)


class _TwoConv(nn.Module):
  """Two 3x3 convs (blocks), global mean, dense: halo overhead has a closed form."""
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), name="blocks_0_0")(x))
    x = nn.relu(nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)), name="blocks_0_1")(x))
    return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


def test_mac_overhead_closed_form():
  h, n, cin = 24, 4, 3
  model = _TwoConv()
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, h, h, cin))))
  m = mac_overhead(model, v, (1, h, h, cin), split=2, num_patches=n)
  # Each of the n - 1 interior patch borders makes the first conv recompute 2 rows (and
  # columns): (h + 2 (n - 1))^2 positions instead of h^2; the second conv has no halo.
  per1, per2 = 9 * cin * 4, 9 * 4 * 6
  assert m["stage_full"] == h * h * (per1 + per2)
  assert m["stage_patched"] == (h + 2 * (n - 1)) ** 2 * per1 + h * h * per2
  assert m["rest"] == 6 * 3
  assert m["overhead"] == pytest.approx(m["total_patched"] / m["total_full"] - 1)


def test_patch_grid_and_ranges():
  assert P.patch_starts(18, 4) == (5, (0, 5, 10, 13))
  assert P.patch_starts(8, 2) == (4, (0, 4))
  # conv k=3, s=2, p=1: output rows [a, a + 5) need input rows [2a - 1, 2a + 10).
  r = P.AxisRange(1, 0, 5).backward(3, 2, 1)
  assert (r.scale, r.offset, r.length) == (2, -1, 11)
  assert r.in_image(0, 20) == 10 and r.in_image(5, 20) == 11  # [-1, 10) and [9, 20)


def test_bad_split_and_patches_raise_one_line_errors():
  model = TINY_IR()
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  g = G.trace(model, v, (1, 32, 32, 3))
  with pytest.raises(errors.ConfigError, match=r"split must be in 0\.\.5") as e:
    P.make_plan(g, 6, 2)
  assert "\n" not in str(e.value)
  with pytest.raises(errors.ConfigError, match="num_patches=9 must be between 1 and"):
    P.make_plan(g, 2, 9)   # stage output is 8x8


class _SE(nn.Module):
  """A block with squeeze-and-excitation: its global pooling cannot run per patch."""
  @nn.compact
  def __call__(self, x, train=False):
    y = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), name="conv")(x)
    return y * nn.sigmoid(nn.Dense(4, name="fc")(y.mean(axis=(1, 2), keepdims=True)))


class _SENet(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = _SE(name="blocks_0_0")(x)
    x = _SE(name="blocks_1_0")(x)
    return x.mean(axis=(1, 2))


def test_global_op_in_patch_stage_is_refused():
  model = _SENet()
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
  g = G.trace(model, v, (1, 16, 16, 3))
  with pytest.raises(errors.ConfigError,
                     match="cannot run 'mul' at blocks_0_0.*pooled.*smaller split"):
    P.make_plan(g, 1, 2)


def test_se_net_split_zero_has_nothing_to_patch():
  model = _SENet()
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
  g = G.trace(model, v, (1, 16, 16, 3))
  plan = P.make_plan(g, 0, 2)
  # Only the image crosses the split: the patch stage is empty and assembles the input.
  assert plan.stage == [] and plan.outputs == [g.input]
