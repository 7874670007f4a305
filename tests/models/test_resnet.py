"""ResNets: CIFAR option-A shortcuts, the grokking pre-activation ResNet-18 vs float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdl.models as models
from jaxdl.models.resnet import PreActBlock


def _conv_nhwc(x, k, stride=1):
  """float64 reference convolution, 'same' padding k // 2, x [N,H,W,C], k [kh,kw,C,O]."""
  kh = k.shape[0]
  p = kh // 2
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  h = (x.shape[1] + 2 * p - kh) // stride + 1
  w = (x.shape[2] + 2 * p - kh) // stride + 1
  out = np.zeros((x.shape[0], h, w, k.shape[-1]))
  for i in range(kh):
    for j in range(kh):
      patch = xp[:, i:i + stride * h:stride, j:j + stride * w:stride, :]
      out += patch @ k[i, j]
  return out


def test_preact_block_matches_numpy(fast_jit):
  """Stride 2, 4 -> 6 channels, no BN: y = conv2(relu(conv1(relu x))) + conv1x1(relu x)."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 6, 4)).astype(np.float32)
  block = PreActBlock(6, stride=2, use_bn=False)
  shapes = jax.eval_shape(block.init, jax.random.key(0), x)["params"]
  assert set(shapes) == {"conv1", "conv2", "shortcut_0"}
  p = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
  got = fast_jit(lambda p, x: block.apply({"params": p}, x))(p, x)
  r = np.maximum(x.astype(np.float64), 0)
  k = {n: np.asarray(p[n]["kernel"], np.float64) for n in p}
  want = _conv_nhwc(np.maximum(_conv_nhwc(r, k["conv1"], 2), 0), k["conv2"]) \
      + _conv_nhwc(r, k["shortcut_0"], 2)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_grokking_preact_resnet18(fast_jit, random_variables):
  model = models.create("preact_resnet18", width=4, use_bn=False)
  x = np.random.default_rng(1).standard_normal((2, 16, 16, 3)).astype(np.float32)
  v = random_variables(model, x)
  assert set(v) == {"params"}  # no batch_stats: the parameters are the whole state
  feat = models.create("preact_resnet18", width=4, use_bn=False, features_only=True)
  (logits, state), feats = fast_jit(lambda v, x: (
      model.apply(v, x, mutable=["preactivations"]), feat.apply(v, x)))(v, x)
  assert logits.shape == (2, 10) and feats.shape == (2, 2, 2, 32)
  # Two ReLUs per block, 8 blocks, all recorded; no ReLU after the last block.
  assert len(jax.tree_util.tree_leaves(state["preactivations"])) == 16
  w = v["params"]["linear"]
  np.testing.assert_allclose(feats.mean(axis=(1, 2)) @ w["kernel"] + w["bias"], logits,
                             rtol=1e-4, atol=1e-4)


def test_cifar_resnet_option_a_shortcut(fast_jit, random_variables):
  """With its residual branch switched off (bn2 scale 0, bias 0), layer2_0 computes
  relu(x[:, ::2, ::2] zero-padded from 16 to 32 channels, 8 on each side)."""
  model = models.create("resnet20")
  x = np.random.default_rng(2).standard_normal((2, 8, 8, 3)).astype(np.float32)
  v = random_variables(model, x)
  bn2 = v["params"]["layer2_0"]["bn2"]
  v["params"]["layer2_0"]["bn2"] = {"scale": jnp.zeros_like(bn2["scale"]),
                                    "bias": jnp.zeros_like(bn2["bias"])}
  assert "downsample_0" not in v["params"]["layer2_0"]  # option A has no parameters
  _, state = fast_jit(lambda v, x: model.apply(
      v, x, mutable=["intermediates"],
      capture_intermediates=lambda m, _: m.name in ("layer1_2", "layer2_0")))(v, x)
  before = np.asarray(state["intermediates"]["layer1_2"]["__call__"][0])
  after = np.asarray(state["intermediates"]["layer2_0"]["__call__"][0])
  want = np.pad(before[:, ::2, ::2], ((0, 0), (0, 0), (0, 0), (8, 8)))
  assert after.shape == (2, 4, 4, 32)
  np.testing.assert_allclose(after, np.maximum(want, 0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,channels", [("resnet18", 512), ("resnet50", 2048)])
def test_imagenet_resnet_features(name, channels):
  x = jnp.zeros((2, 64, 64, 3))
  feats = jax.eval_shape(lambda: models.create(name, features_only=True).init_with_output(
      jax.random.key(0), x)[0])
  assert feats.shape == (2, 2, 2, channels)
