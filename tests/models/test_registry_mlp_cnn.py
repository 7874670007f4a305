"""The model registry and the first two families (mlp, cnn) against plain numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdl.models as models
from jaxdl import errors


def test_registry_names_and_errors():
  names = models.list_models()
  assert {"mlp", "cnn", "cnn_small", "cnn_cifar"} <= set(names)
  assert models.family_of("cnn_small") == "cnn"
  with pytest.raises(errors.UnknownNameError, match="Did you mean 'mlp'"):
    models.create("mpl")
  with pytest.raises(errors.ConfigError, match="no option.*widht.*features"):
    models.create("mlp", widht=3)


def test_mlp_matches_numpy_and_records_preactivations():
  model = models.create("mlp", features=(7, 5), num_classes=3, activation="tanh")
  x = np.random.default_rng(0).normal(size=(4, 2, 3)).astype(np.float32)
  variables = model.init(jax.random.key(1), x)
  out, state = model.apply(variables, x, mutable=["preactivations"])
  p = jax.tree.map(np.asarray, variables["params"])
  h = x.reshape(4, -1)
  pre = []
  for i in range(2):
    z = h @ p[f"dense_{i}"]["kernel"] + p[f"dense_{i}"]["bias"]
    pre.append(z)
    h = np.tanh(z)
  ref = h @ p["head"]["kernel"] + p["head"]["bias"]
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  for i in range(2):
    np.testing.assert_allclose(state["preactivations"][f"act_{i}"][0], pre[i], rtol=1e-5,
                               atol=1e-5)


def test_torch_init_bounds_and_scale():
  model = models.create("mlp", features=(50,), weight_init="torch", init_scale=8.0)
  p = model.init(jax.random.key(0), jnp.zeros((1, 100)))["params"]
  bound = 8.0 / np.sqrt(100)
  for leaf in (p["dense_0"]["kernel"], p["dense_0"]["bias"]):
    assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.9 * bound


def test_vmapped_init_draws_independent_networks():
  model = models.create("mlp", features=(16,), num_classes=1)
  keys = jax.random.split(jax.random.key(0), 5)
  params = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 3))))(keys)["params"]
  w = params["dense_0"]["kernel"]
  assert w.shape == (5, 3, 16) and not np.allclose(w[0], w[1])


def test_cnn_shapes_features_only_and_batchnorm_state():
  x = jnp.ones((2, 16, 16, 3))
  cnn = models.create("cnn_cifar", num_classes=4)
  variables = cnn.init(jax.random.key(0), x)
  assert "batch_stats" in variables
  logits, new_state = cnn.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (2, 4) and logits.dtype == jnp.float32
  assert not np.allclose(new_state["batch_stats"]["stage0_bn0"]["mean"], 0)
  feats = models.create("cnn_cifar", features_only=True).apply(variables, x)
  assert feats.shape == (2, 4, 4, 256)


def test_cnn_bfloat16_compute_keeps_float32_params():
  cnn = models.create("cnn_small", dtype=jnp.bfloat16)
  variables = cnn.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  ref = models.create("cnn_small").apply(variables, jnp.ones((1, 8, 8, 1)))
  out = cnn.apply(variables, jnp.ones((1, 8, 8, 1)))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=0.05 * float(jnp.abs(ref).max()) + 1e-2)
