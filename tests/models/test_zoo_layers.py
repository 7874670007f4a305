"""Shared layers of the zoo: PyTorch-convention norms (float64 references), drop path and
recompute-in-backward rematerialization, the NHWC input check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdl.models as models
from jaxdl import errors
from jaxdl.layers.drop_path import DropPath
from jaxdl.layers.norm import batch_norm, layer_norm
from jaxdl.layers.remat import recompute_in_backward

RNG = np.random.default_rng(0)
# A large mean makes E[x^2] - mean^2 lose digits: the two-pass variance must not.
X = (RNG.standard_normal((4, 3, 3, 5)) * 0.1 + 300.0).astype(np.float32)


def test_layer_norm_is_timm_layernorm2d():
  ln = layer_norm("ln")
  v = ln.init(jax.random.key(0), X)
  got = ln.apply(v, X)
  x = X.astype(np.float64)
  want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)


def test_batch_norm_train_and_eval_follow_pytorch():
  bn = batch_norm(True, "bn")
  v = bn.init(jax.random.key(0), X)
  y, new = bn.apply(v, X, mutable=["batch_stats"])
  x = X.astype(np.float64)
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=2e-3)
  # PyTorch momentum 0.1: running = 0.9 running + 0.1 batch (torch stores the unbiased var).
  np.testing.assert_allclose(new["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(new["batch_stats"]["var"], 0.9 + 0.1 * var, rtol=1e-4)
  ev = batch_norm(False, "bn").apply({**v, **new}, X)
  np.testing.assert_allclose(
      ev, (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var + 1e-5), rtol=1e-4)


def test_drop_path_drops_whole_examples_and_keeps_the_mean():
  rate = 0.3
  x = jnp.ones((20000, 2, 3))
  y = DropPath(rate).apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
  per_example = np.asarray(y).reshape(len(x), -1)
  # Each example is either all zero or all 1 / (1 - rate).
  kept = per_example != 0
  np.testing.assert_allclose(per_example[kept], 1 / (1 - rate), rtol=1e-6)
  assert np.all(per_example.min(1) == per_example.max(1))
  dropped = np.mean(per_example[:, 0] == 0)
  # Binomial(20000, 0.3): standard deviation 0.0032, so 5 sigma is 0.016.
  assert abs(dropped - rate) < 0.016
  assert abs(per_example.mean() - 1.0) < 0.025
  np.testing.assert_array_equal(DropPath(rate).apply({}, x, train=False), x)


def test_recompute_in_backward_same_gradients_less_memory():
  def layer(w, x):
    return jnp.tanh(jnp.tanh(x @ w) * 2.0)

  def net(ws, x, f):
    for w in ws:
      x = f(w, x)
    return jnp.sum(x ** 2)

  rng = np.random.default_rng(0)
  ws = [jnp.asarray(rng.standard_normal((64, 64)) / 8, jnp.float32) for _ in range(6)]
  x = jnp.asarray(rng.standard_normal((256, 64)), jnp.float32)
  results = {}
  # perturb=(0,): only the weights get the cotangent's zero, the activations are not copied.
  for label, f in (("plain", layer), ("recompute", recompute_in_backward(layer)),
                   ("recompute-w", recompute_in_backward(layer, perturb=(0,)))):
    c = jax.jit(jax.grad(lambda ws, x: net(ws, x, f))).lower(ws, x).compile()
    results[label] = (c(ws, x), c.memory_analysis().temp_size_in_bytes,
                      c.as_text().count(" dot("))
  g0, mem0, dots0 = results["plain"]
  for label in ("recompute", "recompute-w"):
    g1, mem1, dots1 = results[label]
    for a, b in zip(g0, g1):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert dots1 > dots0  # the forward matmuls are recomputed in the backward pass
    assert mem1 < mem0


@pytest.mark.parametrize("name", ["densenet_bc_100_k12", "resnet20", "resnet18", "vgg11",
                                  "rdnet_tiny", "mobilenetv2_035", "preact_resnet18"])
@pytest.mark.parametrize("shape,match", [((2, 3, 32, 32), "looks like PyTorch's NCHW"),
                                         ((32, 32, 3), "add a batch axis")])
def test_image_models_reject_non_nhwc_input_in_one_line(name, shape, match):
  model = models.create(name)
  with pytest.raises(errors.ShapeError, match=match) as e:
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
  assert "\n" not in str(e.value) and "[N, H, W, C]" in str(e.value)


def test_accumulate_here_is_the_identity_with_a_fusion_stop_per_platform():
  from jaxdl.layers.remat import accumulate_here
  x = jnp.asarray(RNG.standard_normal((3, 4)), jnp.float32)
  # Two links, the second on a pytree (a tuple of two arrays).
  f = lambda x: jnp.sum(jnp.sin(accumulate_here((accumulate_here(x), 2 * x))[0]) * 2.0)
  np.testing.assert_array_equal(accumulate_here(x), x)
  np.testing.assert_allclose(jax.grad(f)(x), 2.0 * np.cos(np.asarray(x)), rtol=1e-6)
  assert "optimization_barrier" not in str(jax.make_jaxpr(f)(x))  # nothing forward
  # GPUs/TPUs: an optimization barrier per link in the backward pass. CPU: none (XLA:CPU
  # would drop it); a conditional per link that survives XLA's simplification instead.
  for platform in ("cuda", "tpu"):
    mlir = jax.export.export(jax.jit(jax.grad(f)), platforms=(platform,))(x).mlir_module()
    assert "optimization_barrier" in mlir
  cpu = jax.export.export(jax.jit(jax.grad(f)), platforms=("cpu",))(x).mlir_module()
  assert "optimization_barrier" not in cpu
  compiled = jax.jit(jax.grad(f)).lower(x).compile().as_text()
  assert compiled.count(" conditional(") == 2
  # A pytree with a bfloat16 and an integer leaf: only the floats go through the stop.
  g = lambda x: jnp.sum(accumulate_here({"a": x.astype(jnp.bfloat16), "n": jnp.arange(3)})[
      "a"].astype(jnp.float32) ** 2)
  np.testing.assert_allclose(jax.jit(jax.grad(g))(x), 2 * np.asarray(
      x.astype(jnp.bfloat16).astype(jnp.float32)), rtol=1e-2)
