"""DenseNet-BC: shapes, dense connectivity, memory-efficient = naive, mixed precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdl.models as models
from jaxdl import errors

FAST = {"xla_backend_optimization_level": 0}

# A tiny DenseNet-BC (k=4, two blocks of 3 layers) with the CIFAR stem: same code paths.
TINY = dict(growth_rate=4, block_config=(3, 3), num_classes=5)
X = np.random.default_rng(0).standard_normal((4, 8, 8, 3)).astype(np.float32)
Y = np.arange(4) % 5


@pytest.fixture(scope="module")
def tiny(random_variables):
  model = models.create("densenet_bc_100_k12", **TINY)
  return model, random_variables(model, X)


def test_shapes_and_channel_growth(tiny, fast_jit):
  model, v = tiny
  p = v["params"]
  # Layer l of block 1 reads 2k + (l - 1) k channels; the transition halves 2k + 3k = 20.
  assert p["conv0"]["kernel"].shape == (3, 3, 3, 8)
  assert [p["denseblock1"][f"denselayer{l}"]["norm1"]["scale"].shape[0] for l in (1, 2, 3)] \
      == [8, 12, 16]
  assert p["denseblock1"]["denselayer1"]["conv1"]["kernel"].shape == (1, 1, 8, 16)  # 4k
  assert p["denseblock1"]["denselayer1"]["conv2"]["kernel"].shape == (3, 3, 16, 4)
  assert p["transition1"]["conv"]["kernel"].shape == (1, 1, 20, 10)
  assert p["norm5"]["scale"].shape == (22,) and p["classifier"]["kernel"].shape == (22, 5)
  feat_model = models.create("densenet_bc_100_k12", features_only=True, **TINY)
  logits, feats = fast_jit(lambda v, x: (model.apply(v, x), feat_model.apply(v, x)))(v, X)
  assert logits.shape == (4, 5) and logits.dtype == jnp.float32
  assert feats.shape == (4, 4, 4, 22)
  assert float(feats.min()) >= 0.0  # after norm5 + ReLU, as timm's forward_features
  # The head is global average pooling + classifier on exactly those features.
  head = v["params"]["classifier"]
  np.testing.assert_allclose(feats.mean(axis=(1, 2)) @ head["kernel"] + head["bias"], logits,
                             rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_state(tiny, fast_jit):
  model, v = tiny
  return fast_jit(lambda v, x: model.apply(
      v, x, mutable=["intermediates", "preactivations"],
      capture_intermediates=lambda m, _: m.name in ("conv0", "denseblock1"))[1])(v, X)


def test_dense_connectivity(tiny_state):
  """The block output holds its input unchanged in its first channels (concatenation)."""
  state = tiny_state
  stem = state["intermediates"]["conv0"]["__call__"][0]
  block = state["intermediates"]["denseblock1"]["__call__"][0]
  assert block.shape == (4, 8, 8, 20)
  np.testing.assert_array_equal(block[..., :8], stem)


def test_preactivations_cover_every_relu(tiny_state):
  pre = jax.tree_util.tree_leaves(tiny_state["preactivations"])
  # 2 per dense layer x 6, 1 per transition, 1 after norm5.
  assert len(pre) == 2 * 6 + 1 + 1


def _loss_and_grads(memory_efficient, v, jit, **options):
  model = models.create("densenet_bc_100_k12", memory_efficient=memory_efficient, **TINY,
                        **options)

  def loss(params):
    logits, new = model.apply({"params": params, "batch_stats": v["batch_stats"]}, X,
                              train=True, mutable=["batch_stats"])
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), Y]), new

  return jit(jax.value_and_grad(loss, has_aux=True))(v["params"])


def test_memory_efficient_equals_naive(tiny, fast_jit):
  _, v = tiny
  (l0, s0), g0 = _loss_and_grads(False, v, fast_jit)
  (l1, s1), g1 = _loss_and_grads(True, v, fast_jit)
  assert jax.tree_util.tree_structure(g0) == jax.tree_util.tree_structure(g1)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves((g0, s0)), jax.tree_util.tree_leaves((g1, s1))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert float(jnp.abs(g0["denseblock1"]["denselayer1"]["norm1"]["scale"]).max()) > 0


def test_memory_efficient_blocks_accumulate_cotangents_layer_by_layer(tiny, monkeypatch):
  """Memory-efficient dense blocks read their feature maps through `accumulate_here` links
  (one per layer after the first, on all the feature maps it reads, and one before the
  block's output), so that XLA sums each feature map's cotangent as the backward pass goes
  (BENCHMARKS.md "Memory-efficient DenseNet"); same gradients."""
  from jaxdl.models import densenet
  _, v = tiny
  model = models.create("densenet_bc_100_k12", memory_efficient=True, **TINY)

  def loss(params):
    logits, _ = model.apply({"params": params, "batch_stats": v["batch_stats"]}, X,
                            train=True, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(logits))

  def grads_and_links(links):
    monkeypatch.setattr(densenet, "_INCREMENTAL_GRADS", links)
    jax.clear_caches()
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(v["params"]))
    return jax.jit(jax.grad(loss))(v["params"]), jaxpr.count("optimization_barrier")
  g1, with_links = grads_and_links(True)
  g0, without = grads_and_links(False)
  # Two blocks of 3 layers: layers 2 and 3 of each and the block's output have a link (its
  # non-CPU branch holds one barrier on the tuple of the feature maps read there).
  assert with_links - without == 2 * 3
  for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_array_equal(a, b)


def test_cpu_training_step_temporaries_shrink_with_each_memory_fix(monkeypatch):
  """XLA:CPU's buffer assignment of a memory-efficient DenseNet's gradient: the
  `accumulate_here` links (CPU conditionals) and the chunk loops' late outputs
  (`scan_batch_chunks`) each lower the temporaries (DenseNet-BC-100 training step at batch
  64: 897 -> 515 MiB memory-efficient, 2,415 -> 2,163 MiB naive; tools/bench_memory.py)."""
  from jaxdl.layers import conv
  from jaxdl.models import densenet
  model = models.create("densenet_bc_100_k12", memory_efficient=True, **TINY)
  x = jax.ShapeDtypeStruct(X.shape, jnp.float32)
  v = jax.eval_shape(model.init, jax.random.key(0), x)

  def loss(params, batch_stats, x):
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                            mutable=["batch_stats"])
    return jnp.sum(logits)

  def temp(switch=None):
    with monkeypatch.context() as m:
      if switch:
        m.setattr(*switch, False)
      jax.clear_caches()
      lowered = jax.jit(jax.grad(loss)).lower(v["params"], v["batch_stats"], x)
      return lowered.compile(FAST).memory_analysis().temp_size_in_bytes
  with_both = temp()
  assert with_both < 0.95 * temp((densenet, "_INCREMENTAL_GRADS"))
  assert with_both < 0.95 * temp((conv, "_OUTPUTS_AFTER_OPERANDS"))


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_shared_feature_statistics_equal_per_layer_batch_norm(tiny, fast_jit, monkeypatch,
                                                              memory_efficient):
  # Training on CPU, a dense block computes each feature map's batch statistics once and
  # every later layer's norm1 uses them (concat_normalize_relu): same loss, running
  # statistics and gradients as each layer's BatchNorm over its own concatenation.
  from jaxdl.models import densenet
  _, v = tiny
  uses_shared = lambda: "_cnr_fwd" in str(_loss_and_grads(memory_efficient, v, jax.make_jaxpr))
  assert uses_shared()
  (l0, s0), g0 = _loss_and_grads(memory_efficient, v, fast_jit)
  monkeypatch.setattr(densenet, "_CACHE_STATS", False)
  assert not uses_shared()
  (l1, s1), g1 = _loss_and_grads(memory_efficient, v, fast_jit)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves((g0, s0)), jax.tree_util.tree_leaves((g1, s1))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_bottleneck_kernel_option_equals_xla(tiny, fast_jit, memory_efficient):
  # bottleneck_impl="pallas" (interpret mode on CPU): per-input batch moments, BatchNorm
  # folded into the kernel's scale/shift, the kernel's custom VJP; same loss, updated
  # statistics and gradients as the concatenating XLA path (float32 sums in another order).
  _, v = tiny
  (l0, s0), g0 = _loss_and_grads(False, v, fast_jit)
  (l1, s1), g1 = _loss_and_grads(memory_efficient, v, fast_jit, bottleneck_impl="pallas")
  np.testing.assert_allclose(l0, l1, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves((g0, s0)), jax.tree_util.tree_leaves((g1, s1))):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_memory_efficient_lowers_compiled_memory():
  """XLA's buffer assignment for the backward pass: less scratch memory, more convolutions
  and matmuls (conv1 of each dense layer is recomputed; on CPU it is a matmul).
  tools/bench_memory.py measures full models."""
  def compiled(me):
    model = models.create("densenet_bc_100_k12", memory_efficient=me, growth_rate=4,
                          block_config=(6,), num_classes=3)
    x = jnp.zeros((8, 8, 8, 3))
    v = jax.eval_shape(model.init, jax.random.key(0), x)
    f = lambda p, s: jnp.sum(model.apply({"params": p, "batch_stats": s}, x, train=True,
                                         mutable=["batch_stats"])[0])
    c = jax.jit(jax.grad(f)).lower(v["params"], v["batch_stats"]).compile(FAST)
    hlo = c.as_text()
    return c.memory_analysis().temp_size_in_bytes, hlo.count("convolution(") + hlo.count(" dot(")
  (naive_mem, naive_convs), (me_mem, me_convs) = compiled(False), compiled(True)
  assert me_convs > naive_convs
  assert me_mem < 0.7 * naive_mem


def test_bfloat16_compute_keeps_float32_params_and_stats(fast_jit):
  model = models.create("densenet_bc_100_k12", dtype=jnp.bfloat16, **TINY)
  v = jax.eval_shape(model.init, jax.random.key(0), X)
  dtypes = {a.dtype for a in jax.tree_util.tree_leaves((v["params"], v["batch_stats"]))}
  assert dtypes == {jnp.dtype(jnp.float32)}
  out, state = jax.eval_shape(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats", "preactivations"]),
      {k: v[k] for k in ("params", "batch_stats")}, X)
  assert out.dtype == jnp.float32
  assert {a.dtype for a in jax.tree_util.tree_leaves(state["batch_stats"])} == {
      jnp.dtype(jnp.float32)}
  assert jax.tree_util.tree_leaves(state["preactivations"])[0].dtype == jnp.bfloat16


def test_dropout_uses_the_dropout_rng(tiny, fast_jit):
  plain, v = tiny
  model = models.create("densenet_bc_100_k12", drop_rate=0.5, proj_drop_rate=0.2, **TINY)

  @fast_jit
  def run(key):
    train = model.apply(v, X, train=True, mutable=["batch_stats"], rngs={"dropout": key})[0]
    return train, model.apply(v, X), plain.apply(v, X)

  (a, eval_a, eval_plain), (b, _, _), (a2, _, _) = [run(jax.random.key(s)) for s in (0, 1, 0)]
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, a2)
  np.testing.assert_array_equal(eval_a, eval_plain)  # eval mode: no dropout


@pytest.mark.parametrize("override,match", [(dict(stem="tiny"), "stem"),
                                            (dict(memory_efficient=True, remat="x"), "remat"),
                                            (dict(bottleneck_impl="cuda"), "bottleneck_impl")])
def test_bad_options_are_one_line_config_errors(override, match):
  model = models.create("densenet_bc_100_k12", growth_rate=2, block_config=(1,), **override)
  with pytest.raises(errors.ConfigError, match=match):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
