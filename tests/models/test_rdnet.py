"""RDNet: structure (timm names and channel rules), drop path, features_only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdl.models as models
from jaxdl import errors
from jaxdl.models.rdnet import RDNetBlock, drop_path_rates

# Three tiny stages: plain, downsampling ESE, non-downsampling ESE.
TINY = dict(num_init_features=16, growth_rates=(8, 16, 16), num_blocks_list=(2, 2, 1),
            is_downsample_block=(False, True, False),
            block_types=("Block", "BlockESE", "BlockESE"), num_classes=7)
X = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(random_variables):
  model = models.create("rdnet_tiny", **TINY)
  return model, random_variables(model, X)


def test_structure_follows_timm(tiny):
  _, v = tiny
  p = v["params"]
  assert p["stem_0"]["kernel"].shape == (4, 4, 3, 16)
  s0 = p["dense_stages_0_0"]
  # Block 1 of stage 0 reads 16 + 8 channels; its expansion is int(24 * 4 / 8) * 8 = 96.
  assert s0["dense_block1"]["layers"]["layers_0"]["kernel"].shape == (7, 7, 1, 24)  # depthwise
  assert s0["dense_block1"]["layers"]["layers_2"]["kernel"].shape == (1, 1, 24, 96)
  assert s0["dense_block1"]["layers"]["layers_4"]["kernel"].shape == (1, 1, 96, 8)
  assert "layers_5" not in s0["dense_block0"]["layers"]                 # plain Block
  # Transition into stage 1: LN over 16 + 2 * 8 = 32 channels, 2x2/2 conv to 16.
  assert p["dense_stages_1_0"]["scale"].shape == (32,)
  assert p["dense_stages_1_1"]["kernel"].shape == (2, 2, 32, 16)
  assert p["dense_stages_1_2"]["dense_block0"]["layers"]["layers_5"]["fc"]["kernel"].shape == (
      1, 1, 16, 16)                                                     # ESE
  # Stage 2 does not downsample: 1x1 transition from 16 + 32 = 48 to 24.
  assert p["dense_stages_2_1"]["kernel"].shape == (1, 1, 48, 24)
  assert p["head"]["norm"]["scale"].shape == (40,) and p["head"]["fc"]["kernel"].shape == (40, 7)


def test_layer_scale_starts_at_1e_6(fast_jit):
  block = RDNetBlock(growth_rate=3)
  v = fast_jit(block.init)(jax.random.key(0), [jnp.ones((1, 1, 1, 2))])
  np.testing.assert_array_equal(v["params"]["gamma"], np.full(3, 1e-6, np.float32))


def test_logits_and_features(tiny, fast_jit):
  model, v = tiny
  feat_model = models.create("rdnet_tiny", features_only=True, **TINY)
  logits, feats = fast_jit(lambda v, x: (model.apply(v, x), feat_model.apply(v, x)))(v, X)
  assert logits.shape == (2, 7) and feats.shape == (2, 2, 2, 40)
  # Head: global average pool - LayerNorm (eps 1e-6) - fc, checked in float64 numpy.
  pooled = np.asarray(feats, np.float64).mean(axis=(1, 2))
  norm = (pooled - pooled.mean(-1, keepdims=True)) / np.sqrt(pooled.var(-1, keepdims=True)
                                                             + 1e-6)
  h = v["params"]["head"]
  want = (norm * h["norm"]["scale"] + h["norm"]["bias"]) @ h["fc"]["kernel"] + h["fc"]["bias"]
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)


def test_drop_path_rates_grow_linearly_over_blocks():
  rates = drop_path_rates(0.4, (2, 2, 1))
  assert [len(r) for r in rates] == [2, 2, 1]
  np.testing.assert_allclose(sum(rates, ()), [0.0, 0.1, 0.2, 0.3, 0.4])


def test_drop_path_is_active_only_in_training(tiny, fast_jit):
  _, v = tiny  # random layer scales U(0.5, 1.5): the blocks count, so dropping them shows
  model = models.create("rdnet_tiny", drop_path_rate=0.5, **TINY)
  plain = models.create("rdnet_tiny", **TINY)

  @fast_jit
  def run(key):
    return (model.apply(v, X, train=True, rngs={"dropout": key}), model.apply(v, X),
            plain.apply(v, X))

  (a, eval_a, eval_plain), (b, _, _) = run(jax.random.key(0)), run(jax.random.key(1))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(eval_a, eval_plain)


def test_mismatched_stage_lists_are_a_config_error():
  model = models.create("rdnet_tiny", growth_rates=(8, 8))
  with pytest.raises(errors.ConfigError, match="one entry per stage"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU fusion decision")
def test_the_mixer_dot_is_not_in_the_layer_norm_ynnpack_fusion(monkeypatch):
  """Compiled with jaxdl.compiler's options, RDNet-T's first FeatureMixer keeps its 1x1 dot
  out of the LayerNorm's YNNPACK reduction fusion (`loop_fusion_boundary` after the LN):
  XLA's own dot is faster. Compiled, never run."""
  from jaxdl import compiler
  from jaxdl.layers import conv as lc
  from jaxdl.models.rdnet import FeatureMixer
  mixer = FeatureMixer(inter_features=768, out_features=32)
  x = jnp.ones((2, 56, 56, 192))
  variables = jax.eval_shape(mixer.init, jax.random.key(0), x)

  def fused_dots():
    text = compiler.jit(lambda v, x: mixer.apply(v, x)).lower(variables, x).compile().as_text()
    return [ops for ops in compiler.ynn_fusions(text) if "dot" in ops and "reduce" in ops]

  assert fused_dots() == []
  monkeypatch.setattr(lc, "_loop_fusion_boundary", lambda y: y)
  if not fused_dots():
    pytest.skip("this XLA no longer fuses the LN's sums with the dot without the boundary: "
                "re-measure rdnet_tiny and drop the boundary after the LN")


def test_gelu_conv_matches_float64_autodiff():
  """FeatureMixer's conv(gelu(h)) that recomputes the GELU in the backward pass: values and
  gradients of float64 autodiff of the plain composition."""
  from jaxdl.layers import activations
  from jaxdl.layers import conv as lc
  from jaxdl.models.rdnet import _gelu_conv
  rng = np.random.default_rng(1)
  h = rng.standard_normal((2, 5, 5, 12)).astype(np.float32) * 2
  k = rng.standard_normal((1, 1, 12, 4)).astype(np.float32) / 3
  dn = ("NHWC", "HWIO", "NHWC")
  loss = lambda f: lambda h, k: jnp.sum(jnp.sin(f(h, k)))
  fused = lambda h, k: _gelu_conv(h, k, (1, 1), "VALID", dimension_numbers=dn)
  plain = lambda h, k: jax.lax.conv_general_dilated(activations.gelu(h), k, (1, 1), "VALID",
                                                    dimension_numbers=dn)
  with lc.conv_impl("fast"):
    got = jax.jit(jax.value_and_grad(loss(fused), argnums=(0, 1)))(h, k)
  with jax.enable_x64(True):
    want = jax.value_and_grad(loss(plain), argnums=(0, 1))(h.astype(np.float64),
                                                           k.astype(np.float64))
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for a, b in zip(got[1], want[1]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU formulation's memory")
def test_mixer_backward_keeps_gelu_input_only(monkeypatch):
  """With the GELU recomputed, the gradient of four FeatureMixers in a row needs less
  temporary memory and no more matmuls (each recomputed forward conv is compiled away).
  Compiled, never run."""
  import jaxdl.models.rdnet as rd
  mixers = [rd.FeatureMixer(inter_features=256, out_features=64) for _ in range(4)]
  x = jnp.ones((4, 28, 28, 64))
  variables = [jax.eval_shape(m.init, jax.random.key(0), x) for m in mixers]

  def loss(vs, x):
    for m, v in zip(mixers, vs):
      x = jnp.tanh(m.apply(v, x))
    return jnp.sum(x ** 2)

  def compiled(recompute):
    monkeypatch.setattr(rd, "_RECOMPUTE_GELU", recompute)
    c = jax.jit(jax.grad(loss)).lower(variables, x).compile()
    return c.memory_analysis().temp_size_in_bytes, c.as_text().count(" dot(")

  (mem, dots), (mem_stored, dots_stored) = compiled(True), compiled(False)
  assert dots == dots_stored
  # Three of the four [4, 28, 28, 256] float32 GELU outputs (3.2 MB each) are no longer
  # kept while the backward pass reaches them.
  assert mem <= mem_stored - 3 * 4 * 28 * 28 * 256 * 4


def test_norm_fast_variance_reaches_every_layer_norm_and_keeps_the_function(tiny, fast_jit):
  """norm_fast_variance (one-pass LayerNorm variance, for XLA:GPU's compile time): every
  LayerNorm of the model takes it, the parameters are the same and so are the logits to
  float32 rounding; the plain model's LayerNorms keep PyTorch's two-pass form."""
  import flax.linen as nn
  model, v = tiny
  fast = models.create("rdnet_tiny", norm_fast_variance=True, **TINY)

  def layer_norm_modes(m):
    seen = []

    def record(next_fun, args, kwargs, context):
      if isinstance(context.module, nn.LayerNorm) and context.method_name == "__call__":
        seen.append(context.module.use_fast_variance)
      return next_fun(*args, **kwargs)
    with nn.intercept_methods(record):
      out = m.apply(v, X)
    return out, seen

  want, plain_modes = layer_norm_modes(model)
  got, fast_modes = layer_norm_modes(fast)
  # stem, 5 mixers, 2 transitions, head.
  assert plain_modes == [False] * 9 and fast_modes == [True] * 9
  assert (jax.tree.structure(fast_jit(fast.init)(jax.random.key(0), X)["params"])
          == jax.tree.structure(v["params"]))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_layer_norm_variance_forms_match_float64():
  from jaxdl.layers.norm import layer_norm
  x = np.random.default_rng(2).standard_normal((3, 4, 4, 24)).astype(np.float32) * 3 + 1
  x64 = x.astype(np.float64)
  want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
  for fast in (False, True):
    ln = layer_norm("ln", fast_variance=fast)
    v = ln.init(jax.random.key(0), x)
    np.testing.assert_allclose(ln.apply(v, x), want, rtol=1e-5, atol=1e-5)
