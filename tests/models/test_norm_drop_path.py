"""Shared layers of the zoo: PyTorch-convention norms (float64 references) and drop path."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.layers.drop_path import DropPath
from jaxdl.layers.norm import batch_norm, layer_norm

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
