"""MobileNetV2 / MCUNet: parameter counts against timm and the mcunet README (shape-only)."""

import jax
import jax.numpy as jnp
import pytest

from jaxdl import errors, models
from jaxdl.models.mobilenet import make_divisible, stage_indices


def _num_params(name, resolution=224, **overrides):
  model = models.create(name, **overrides)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, resolution, resolution, 3))))
  return sum(x.size for x in jax.tree.leaves(shapes["params"])), shapes


@pytest.mark.parametrize("name, expected", [
    # timm.create_model(name).parameters() with 1000 classes (timm 1.0.31).
    ("mobilenetv2_100", 3_504_872),
    ("mobilenetv2_050", 1_968_680),
    ("mobilenetv2_035", 1_677_128),
])
def test_mobilenetv2_param_counts_equal_timm(name, expected):
  n, _ = _num_params(name, 64)
  assert n == expected


@pytest.mark.parametrize("name, millions", [
    # mit-han-lab/mcunet README "#Params" column (rounded to 0.01M).
    ("mcunet_in0", 0.75), ("mcunet_in1", 0.64), ("mcunet_in2", 0.73), ("mcunet_in3", 0.74),
    ("mcunet_in4", 1.73), ("mcunet_vww2", 0.64),
])
def test_mcunet_param_counts_match_readme(name, millions):
  n, _ = _num_params(name, 64)
  assert round(n / 1e6, 2) == millions


def test_timm_module_names_and_stage_grouping():
  _, shapes = _num_params("mobilenetv2_035", 64)
  p = shapes["params"]
  assert {"conv_stem", "bn1", "conv_head", "bn2", "classifier"} <= set(p)
  assert set(p["blocks_0_0"]) == {"conv_dw", "bn1", "conv_pw", "bn2"}
  assert set(p["blocks_1_0"]) == {"conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3"}
  blocks = sorted(k for k in p if k.startswith("blocks_"))
  # timm's stages: 1, 2, 3, 4, 3, 3, 1 blocks.
  assert len(blocks) == 17 and "blocks_3_3" in p and "blocks_6_0" in p
  # Depthwise kernel [k, k, 1, C]; width 0.35 -> stem 16, head 1280 (timm rounding).
  assert p["blocks_1_0"]["conv_dw"]["kernel"].shape == (3, 3, 1, 48)
  assert p["conv_stem"]["kernel"].shape == (3, 3, 3, 16)
  assert p["conv_head"]["kernel"].shape[-1] == 1280
  assert stage_indices([8, 16, 16, 24]) == [(0, 0), (1, 0), (1, 1), (2, 0)]


def test_make_divisible_matches_timm_rules():
  assert make_divisible(32 * 0.35) == 16   # 11.2 -> 8 would lose > 10%: 16
  assert make_divisible(24 * 0.35) == 8
  assert make_divisible(1280 * 1.4) == 1792


def test_features_only_and_preactivations():
  model = models.create("mcunet_in0", features_only=True)
  x = jnp.zeros((1, 48, 48, 3))
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))
  feats, variables = out
  assert feats.shape == (1, 2, 2, 192)
  pre = variables["preactivations"]
  assert "bn1_act" in pre and "bn2_act" in pre["blocks_1_0"]


def test_bad_block_lists_raise_one_line_errors():
  model = models.create("mobilenetv2_035", kernel_sizes=(3,) * 16)
  with pytest.raises(errors.ConfigError, match="one entry per block"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
