"""ProtoPNet / EvalProtoPNet / ST-ProtoPNet: forward on a tiny CNN backbone, and the losses
against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import errors, models
from jaxdl.layers.prototype import class_identity
from jaxdl.models import protopnet as pp

TINY = dict(num_classes=3, backbone="cnn", prototypes_per_class=2, prototype_dim=4,
            backbone_kwargs={"features": (4, 8), "use_bn": True}, impl="pallas",
            interpret=True)


@pytest.fixture(scope="module")
def x():
  return jax.random.normal(jax.random.key(0), (2, 8, 8, 3))


@pytest.mark.parametrize("variant", ["protopnet", "evalprotopnet", "stprotopnet"])
def test_forward_shapes_and_logits(variant, x):
  kw = dict(TINY, shallow_layer="stage0_bn0") if variant == "evalprotopnet" else TINY
  model = models.create(variant, **kw)
  v = model.init(jax.random.key(1), x)
  logits, aux = model.apply(v, x, with_aux=True)
  assert logits.shape == (2, 3) and logits.dtype == jnp.float32
  maps = model.apply(v, x, method="activation_maps")
  assert maps.shape == (2, 4, 4, 6)
  if variant == "protopnet":
    # logits = last_layer(log-similarity of the min distances); the last layer starts +1/-0.5
    w = np.asarray(v["params"]["last_layer"]["kernel"])
    np.testing.assert_array_equal(w, np.where(np.asarray(class_identity(6, 3)) > 0, 1.0, -0.5))
    sim = np.log((aux["min_distances"] + 1) / (aux["min_distances"] + 1e-4))
    np.testing.assert_allclose(logits, sim @ w, rtol=1e-5)
    # The activation maps' max is the similarity of the min distance.
    np.testing.assert_allclose(maps.reshape(2, -1, 6).max(1), sim, rtol=1e-5)
  elif variant == "evalprotopnet":
    # SA with its initial weights (all ones -> softmax 1/ppc * ppc = 1): sum per class.
    np.testing.assert_allclose(logits, aux["activations"].reshape(2, 3, 2).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(maps.reshape(2, -1, 6).max(1), aux["activations"], rtol=1e-5)
    assert aux["shallow"].shape == (2, 4, 4, 4 * 4)  # 8x8x4 space-to-depth onto 4x4
  else:
    np.testing.assert_allclose(logits, aux["trivial"]["logits"] + aux["support"]["logits"],
                               rtol=1e-5)


def test_bad_shallow_layer(x):
  model = models.create("evalprotopnet", **dict(TINY, shallow_layer="layer1_2"))
  with pytest.raises(errors.ConfigError, match="not a submodule"):
    model.init(jax.random.key(0), x)


def test_space_to_depth():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  y = pp.space_to_depth(x, (2, 2))
  np.testing.assert_array_equal(y[0, 0, 0], [0, 1, 4, 5])
  np.testing.assert_array_equal(y[0, 1, 1], [10, 11, 14, 15])
  with pytest.raises(errors.ShapeError):
    pp.space_to_depth(jnp.ones((1, 5, 5, 1)), (2, 2))


def test_cluster_separation_by_hand():
  ident = class_identity(4, 2)  # prototypes 0,1 -> class 0; 2,3 -> class 1
  d = jnp.array([[3.0, 1.0, 5.0, 2.0], [0.5, 4.0, 6.0, 7.0]])
  clst, sep = pp.cluster_separation(d, jnp.array([0, 1]), ident, max_dist=64.0)
  np.testing.assert_allclose(clst, [1.0, 6.0])
  np.testing.assert_allclose(sep, [2.0, 0.5])
  # Cosine distances (negative) work too: the max_dist shift keeps masked entries out.
  clst, sep = pp.cluster_separation(-d / 10, jnp.array([0, 1]), ident, max_dist=4.0)
  np.testing.assert_allclose(clst, [-0.3, -0.7], rtol=1e-6)  # float32 shift by max_dist


def test_l1_orthogonality_by_hand():
  ident = class_identity(4, 2)
  w = jnp.array([[1.0, -0.5], [1.0, 2.0], [-0.5, 1.0], [3.0, 1.0]])
  np.testing.assert_allclose(pp.l1_wrong_class(w, ident), 0.5 + 2.0 + 0.5 + 3.0)
  p = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
  # class 0: P P^T = I -> 0; class 1: [[2, 1], [1, 1]] - I -> |1|+|1|+|1|+|0| = 3
  np.testing.assert_allclose(pp.orthogonality(p, 2), 3.0)


def test_closeness_discrimination_by_hand():
  p = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
  # cross-class dot products between class 0 {a, b} and class 1 {c, d}:
  # a.c=0.6 a.d=-1 b.c=0.8 b.d=0 -> min -1, max 0.8 (symmetric for both ordered pairs)
  np.testing.assert_allclose(pp.closeness(p, 2), 1.0)
  np.testing.assert_allclose(pp.discrimination(p, 2), 0.8)


def test_sdfa_loss_against_a_loop():
  rng = np.random.default_rng(0)
  n, h, w, ppc, classes = 2, 3, 3, 2, 2
  shallow = rng.normal(size=(n, h, w, 5))
  deep = rng.normal(size=(n, h, w, 7))
  argmax = rng.integers(0, h * w, size=(n, ppc * classes))
  targets = np.array([1, 0])
  got = pp.sdfa_loss(jnp.asarray(argmax), jnp.asarray(shallow), jnp.asarray(deep),
                     jnp.asarray(targets), ppc, threshold=0.1)
  terms = []
  for i in range(n):
    s = shallow[i].reshape(h * w, -1)
    d = deep[i].reshape(h * w, -1)
    for j in range(ppc):
      a = argmax[i, targets[i] * ppc + j]
      for b in range(h * w):
        cs = s[a] @ s[b] / np.linalg.norm(s[a]) / np.linalg.norm(s[b])
        cd = d[a] @ d[b] / np.linalg.norm(d[a]) / np.linalg.norm(d[b])
        terms.append(max(abs(cd - cs) - 0.1, 0.0))
  np.testing.assert_allclose(got, np.mean(terms), rtol=1e-5)
