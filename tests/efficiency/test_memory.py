"""Activation memory: MCUNetV2's published MobileNetV2 numbers, a hand count, XLA's analysis."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import errors, models
from jaxdl.efficiency import activation_memory, measured_memory
from jaxdl.efficiency import graph as G
from jaxdl.models.mobilenet import InvertedResidualNet


def _shapes(model, shape):
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  return {k: v[k] for k in ("params", "batch_stats") if k in v}


@pytest.fixture(scope="module")
def mbv2_224():
  model = models.create("mobilenetv2_100")
  return model, _shapes(model, (1, 224, 224, 3))


def test_mobilenetv2_peak_matches_mcunetv2(mbv2_224):
  model, v = mbv2_224
  shape = (1, 224, 224, 3)
  full = activation_memory(model, v, shape)
  # MCUNetV2 (Lin et al. 2021): MobileNetV2 int8 peak 1372 kB, in block 1's expansion:
  # 112 * 112 * (16 + 96) bytes.
  assert full["peak_bytes"] == 112 * 112 * (16 + 96) == 1372 * 1024
  assert full["peak_layer"] == "blocks_1_0/conv_pw"
  # 4x4 patches up to the 28x28 stage: 172 kB (the 28x28 expansion 32 -> 192), 8x smaller.
  patched = activation_memory(model, v, shape, split=4, num_patches=4)
  assert patched["peak_bytes"] == 28 * 28 * (32 + 192)
  assert patched["peak_stage"] == "layer"
  assert patched["stage_output_bytes"] == 28 * 28 * 32
  assert patched["patch_peak_bytes"] < patched["peak_bytes"]
  assert full["peak_bytes"] / patched["peak_bytes"] == pytest.approx(8.0)
  # Without TinyEngine's in-place depthwise the stride-2 depthwise holds input and output.
  naive = activation_memory(model, v, shape, inplace=False, dtype="float32")
  assert naive["peak_bytes"] == 4 * 96 * (112 * 112 + 56 * 56)
  assert naive["peak_layer"] == "blocks_1_0/conv_dw"


class _TwoConv(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), name="blocks_0_0")(x))
    x = nn.relu(nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)), name="blocks_0_1")(x))
    return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


def test_hand_counted_schedules():
  model, shape = _TwoConv(), (1, 12, 12, 3)
  v = _shapes(model, shape)
  full = activation_memory(model, v, shape, dtype="int8")
  by_name = {r["name"]: r["bytes"] for r in full["per_layer"]}
  assert by_name["blocks_0_0"] == 12 * 12 * (3 + 4)       # image + conv1 output
  assert by_name["blocks_0_1"] == 12 * 12 * (4 + 6)       # conv1 + conv2 outputs
  assert full["peak_bytes"] == 12 * 12 * 10
  # 2x2 patches of 6x6: conv2 needs 8x8 of conv1, which needs 10x10 of the image; the
  # 12x12x6 stage output is assembled alongside.
  p = activation_memory(model, v, shape, split=2, num_patches=2, dtype="float32")
  rows = {(r["name"], r["stage"]): r["bytes"] for r in p["per_layer"]}
  stage = 12 * 12 * 6
  assert rows[("blocks_0_0", "patch")] == 4 * (10 * 10 * 3 + 8 * 8 * 4 + stage)
  assert rows[("blocks_0_1", "patch")] == 4 * (8 * 8 * 4 + 6 * 6 * 6 + stage)
  assert p["stage_output_bytes"] == 4 * stage
  resident = activation_memory(model, v, shape, split=2, num_patches=2, dtype="float32",
                               input_resident=True)
  assert resident["per_layer"][0]["bytes"] == 4 * (12 * 12 * 3 + 8 * 8 * 4 + stage)


def test_bad_arguments_raise_one_line_errors():
  model, shape = _TwoConv(), (1, 12, 12, 3)
  v = _shapes(model, shape)
  with pytest.raises(errors.ConfigError, match="split needs num_patches"):
    activation_memory(model, v, shape, split=1)
  with pytest.raises(errors.UnknownNameError, match="unknown activation dtype 'int3'"):
    activation_memory(model, v, shape, dtype="int3")


def test_xla_measured_memory_falls_with_patches():
  # A net whose first layers dominate, as MobileNetV2's: 16 channels at 64x64, then 8x8.
  model = InvertedResidualNet(num_classes=4, kernel_sizes=(3, 3, 3), expand_ratios=(1, 4, 4),
                              channels=(16, 16, 16), strides=(1, 4, 2), stem_size=16,
                              num_features=None)
  shape = (1, 128, 128, 3)
  v = _shapes(model, shape)
  full = measured_memory(model, v, shape)
  patched = measured_memory(model, v, shape, split=2, num_patches=4)
  params = sum(int(np.prod(x.shape)) * 4 for x in jax.tree.leaves(v))
  assert full["argument_bytes"] == patched["argument_bytes"] == params + 4 * 128 * 128 * 3
  assert full["output_bytes"] == 4 * 4
  # XLA's buffer assignment confirms the computed float32 schedules (no in-place tricks).
  for m, kw in ((full, {}), (patched, dict(split=2, num_patches=4))):
    computed = activation_memory(model, v, shape, dtype="float32", inplace=False, **kw)
    assert m["temp_bytes"] == pytest.approx(computed["peak_bytes"], rel=0.1)
  assert patched["temp_bytes"] < full["temp_bytes"] / 5


@pytest.mark.parametrize("name, resolution, millions", [
    ("mcunet_in3", 176, 81.8),   # mit-han-lab/mcunet README
    ("mcunet_vww2", 144, 55.8),  # idem
])
def test_traced_macs_match_published(name, resolution, millions):
  model = models.create(name)
  shape = (1, resolution, resolution, 3)
  g = G.trace(model, _shapes(model, shape), shape)
  assert round(sum(G.macs_per_image(g, n) for n in g.nodes) / 1e6, 1) == millions
