"""Prototype layer: class identity, last-layer init, similarities and distances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import errors
from jaxdl.layers import prototype as pl


def test_class_identity_and_last_layer_init():
  ident = np.asarray(pl.class_identity(6, 3))
  np.testing.assert_array_equal(ident.argmax(1), [0, 0, 1, 1, 2, 2])
  w = np.asarray(pl.last_layer_init(-0.5)(None, (6, 3)))
  assert w[0, 0] == 1.0 and w[0, 1] == -0.5 and w[5, 2] == 1.0 and w[5, 0] == -0.5
  with pytest.raises(errors.ConfigError, match="not a multiple"):
    pl.class_identity(7, 3)


def test_log_similarity():
  np.testing.assert_allclose(pl.log_similarity(jnp.array([0.0, 1.0])),
                             [np.log(1 / 1e-4), np.log(2 / (1 + 1e-4))], rtol=1e-6)


@pytest.mark.parametrize("metric", ["l2", "cosine", "projection"])
def test_layer_min_distances_brute_force(metric):
  layer = pl.PrototypeLayer(num_prototypes=5, prototype_dim=3, metric=metric, impl="pallas",
                            interpret=True)
  z = jax.random.normal(jax.random.key(0), (2, 3, 4, 3))
  variables = layer.init(jax.random.key(1), z)
  p = np.asarray(variables["params"]["prototype_vectors"], np.float64)
  assert p.min() >= 0 and p.max() < 1  # torch.rand
  dist, arg = layer.apply(variables, z)
  zz = np.asarray(z, np.float64).reshape(2, 12, 3)
  for n in range(2):
    for j in range(5):
      if metric == "l2":
        d = ((zz[n] - p[j]) ** 2).sum(-1)
      elif metric == "cosine":
        d = -(zz[n] / np.linalg.norm(zz[n], axis=-1, keepdims=True)) @ (p[j] / np.linalg.norm(p[j]))
      else:
        d = -zz[n] @ (p[j] / np.linalg.norm(p[j]))
      np.testing.assert_allclose(dist[n, j], d.min(), rtol=1e-5, atol=1e-5)
      assert int(arg[n, j]) == int(d.argmin())
  dmap = layer.apply(variables, z, method="distance_map")
  np.testing.assert_allclose(dmap.reshape(2, 12, 5).min(1), dist, rtol=1e-5, atol=1e-5)


def test_layer_rejects_wrong_channels():
  layer = pl.PrototypeLayer(num_prototypes=2, prototype_dim=3)
  with pytest.raises(errors.ShapeError, match="prototype_dim"):
    layer.init(jax.random.key(0), jnp.ones((1, 2, 2, 4)))


def test_mosaic_gpu_impl_takes_bf16_features_with_float32_prototypes():
  # Mixed precision: bf16 feature maps, float32 prototype parameters. The layer casts the
  # prototypes to the features' dtype for the (bf16-only) Mosaic GPU kernel; run here in
  # Mosaic GPU interpret mode and compared with XLA on the same bf16-rounded prototypes.
  rng = np.random.default_rng(11)
  z = jnp.asarray(rng.uniform(0, 1, (2, 3, 4, 64)), jnp.bfloat16)
  p = jnp.asarray(rng.uniform(0, 1, (10, 64)), jnp.float32)
  got_d, got_a = pl.min_distances(z, p, impl="mosaic_gpu", interpret=True)
  want_d, want_a = pl.min_distances(z, p.astype(jnp.bfloat16), impl="xla")
  np.testing.assert_allclose(np.asarray(got_d), np.asarray(want_d), rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(got_a), np.asarray(want_a))
  grad = jax.grad(lambda p: pl.min_distances(z, p, impl="mosaic_gpu",
                                             interpret=True)[0].sum())(p)
  assert grad.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(grad)))
