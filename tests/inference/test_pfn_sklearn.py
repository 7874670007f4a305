"""Tests for jaxdl.PFNRegressor / jaxdl.PFNClassifier (jaxdl/inference/pfn_sklearn.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization
from sklearn.exceptions import NotFittedError

import jaxdl
from jaxdl import errors, models
from jaxdl.inference import gp, pfn
from jaxdl.inference.pfn_sklearn import load_pfn


@pytest.fixture(scope="module")
def reg():
  return jaxdl.PFNRegressor()


@pytest.fixture(scope="module")
def prior_draws(reg):
  p = reg.prior
  sample = pfn.gp_prior(p["kernel"], p["noise_variance"], x_min=p["x_min"], x_max=p["x_max"])
  x, y = sample(jax.random.key(11), 40, 24, 1)
  return np.asarray(x), np.asarray(y)


def test_prior_interface(reg):
  p = reg.prior
  assert isinstance(p["kernel"], gp.Kernel)
  assert set(p) == {"kernel", "noise_variance", "x_min", "x_max", "num_features",
                    "max_context"}
  assert p["x_min"] < p["x_max"] and p["noise_variance"] > 0 and p["max_context"] >= 8
  assert "lengthscale" in str(jaxdl.PFNRegressor.__doc__)


def _exact_gp(kernel, noise, xc, yc, xq, yq):
  """Independent float64 numpy reference: predictive means and log densities [m]."""
  xc, yc, xq, yq = (np.asarray(a, np.float64) for a in (xc, yc, xq, yq))
  k = np.asarray(kernel(xc, xc), np.float64) + noise * np.eye(len(xc))
  ks = np.asarray(kernel(xc, xq), np.float64)
  kss = np.asarray(kernel.diag(xq), np.float64)
  mean = ks.T @ np.linalg.solve(k, yc)
  var = kss - np.sum(ks * np.linalg.solve(k, ks), 0) + noise
  return mean, -0.5 * (np.log(2 * np.pi * var) + (yq - mean) ** 2 / var)


def test_shipped_regressor_is_close_to_exact_gp(reg, prior_draws):
  # A sanity check of the shipped weights (the full study is tools/pfn_gp_eval.py, in
  # RESULTS.md): on 40 fresh prior draws with 8 context points, the mean NLL gap to the
  # exact GP posterior predictive is small and the means agree.
  x, y = prior_draws
  p = reg.prior
  loaded = load_pfn(reg.weights)
  logits = loaded.logits(x[:, :8], y[:, :8], x[:, 8:])
  lp = np.asarray(reg.bar_distribution.log_prob(logits, y[:, 8:]))
  mean = np.asarray(reg.bar_distribution.mean(logits))
  ref = [_exact_gp(p["kernel"], p["noise_variance"], x[i, :8], y[i, :8], x[i, 8:], y[i, 8:])
         for i in range(len(x))]
  m_gp = np.stack([r[0] for r in ref])
  lp_gp = np.stack([r[1] for r in ref])
  assert np.mean(lp_gp - lp) < 0.1
  assert np.mean(np.abs(mean - m_gp)) < 0.15
  # The estimator API gives the same numbers as the batched forward pass.
  reg.fit(x[3, :8], y[3, :8])
  np.testing.assert_allclose(reg.predict_log_density(x[3, 8:], y[3, 8:]), lp[3], atol=1e-4)


def test_predictions_invariant_to_context_order_and_consistent(reg, prior_draws):
  x, y = prior_draws
  reg.fit(x[0, :10], y[0, :10])
  m1, lp1 = reg.predict(x[0, 10:]), reg.predict_log_density(x[0, 10:], y[0, 10:])
  perm = np.random.default_rng(0).permutation(10)
  reg.fit(x[0, :10][perm], y[0, :10][perm])
  np.testing.assert_allclose(reg.predict(x[0, 10:]), m1, atol=1e-4)
  np.testing.assert_allclose(reg.predict_log_density(x[0, 10:], y[0, 10:]), lp1, atol=1e-4)
  # Reordering the queries reorders the answers (each query only sees the context).
  np.testing.assert_allclose(reg.predict(x[0, 10:][::-1]), m1[::-1], atol=1e-5)
  q = reg.predict_quantiles(x[0, 10:], (0.1, 0.5, 0.9))
  assert q.shape == (14, 3) and np.all(np.diff(q, axis=1) > 0)
  assert reg.sample(x[0, 10:], 5).shape == (5, 14)


def test_standardize_is_equivariant_to_affine_targets(prior_draws):
  x, y = prior_draws
  a = jaxdl.PFNRegressor(standardize=True).fit(x[1, :12] * 3 + 1, y[1, :12])
  b = jaxdl.PFNRegressor(standardize=True).fit(x[1, :12] * 3 + 1, 10 * y[1, :12] + 5)
  xq = x[1, 12:] * 3 + 1
  np.testing.assert_allclose(b.predict(xq), 10 * a.predict(xq) + 5, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(b.predict_log_density(xq, 10 * y[1, 12:] + 5),
                             a.predict_log_density(xq, y[1, 12:]) - np.log(10), atol=1e-3)


def _one_line(exc_info):
  msg = str(exc_info.value)
  assert msg and "\n" not in msg
  return msg


def test_regressor_input_validation(reg):
  with pytest.raises(NotFittedError):
    jaxdl.PFNRegressor().predict(np.zeros((2, 1)))
  max_ctx = reg.prior["max_context"]
  cases = [
      ((np.zeros((3, 2)), np.zeros(3)), "features"),
      ((np.zeros((3, 1, 1)), np.zeros(3)), "2-D"),
      ((np.zeros((3, 1)), np.zeros(4)), "4 entries"),
      ((np.array([[0.1], [np.nan]]), np.zeros(2)), "NaN"),
      ((np.zeros((2, 1)), np.array([0.0, np.inf])), "NaN or infinite"),
      ((np.zeros((max_ctx + 1, 1)), np.zeros(max_ctx + 1)), "at most"),
      ((np.array([["a"], ["b"]]), np.zeros(2)), "numeric"),
  ]
  for (X, y), match in cases:
    with pytest.raises(errors.UserError, match=match) as e:
      jaxdl.PFNRegressor().fit(X, y)
    _one_line(e)
  with pytest.raises(errors.DataNotFoundError) as e:
    jaxdl.PFNRegressor(weights="no_such_weights").fit(np.zeros((2, 1)), np.zeros(2))
  _one_line(e)


@pytest.fixture(scope="module")
def tiny_classifier_weights(tmp_path_factory):
  """A randomly initialized 4-feature, 3-class PFN saved like shipped weights."""
  d = tmp_path_factory.mktemp("pfn_weights")
  model = models.create("pfn_small", num_classes=3, num_layers=1, emsize=32, hidden=32,
                        decoder_hidden=32)
  inputs = {"x": jnp.zeros((1, 4, 4)), "y": jnp.zeros((1, 4)), "num_context": jnp.ones(1, int)}
  params = model.init(jax.random.key(0), inputs)["params"]
  (d / "tiny.msgpack").write_bytes(serialization.msgpack_serialize(
      jax.tree.map(np.asarray, params)))
  meta = {"model": {"name": "pfn_small", "num_classes": 3, "num_layers": 1, "emsize": 32,
                    "hidden": 32, "decoder_hidden": 32}, "task": "classification",
          "borders": None, "prior": {"kind": "scm"}, "num_features": 4, "max_context": 50,
          "max_classes": 3}
  (d / "tiny.json").write_text(json.dumps(meta))
  return str(d / "tiny")


def test_classifier_probabilities_and_label_handling(tiny_classifier_weights):
  rng = np.random.default_rng(0)
  X = rng.normal(size=(30, 3)).astype(np.float32)
  y = np.array(["cat", "dog", "eel"])[rng.integers(0, 3, 30)]
  clf = jaxdl.PFNClassifier(tiny_classifier_weights, n_estimators=3).fit(X, y)
  p = clf.predict_proba(X[:7])
  assert p.shape == (7, 3)
  np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
  assert set(clf.predict(X[:7])) <= {"cat", "dog", "eel"}
  # Each member's label shift is undone: a single member with shift 0 vs shift 1 of the
  # same data equals the network's output with relabelled context (computed directly).
  loaded = load_pfn(tiny_classifier_weights)
  one = jaxdl.PFNClassifier(tiny_classifier_weights, n_estimators=2).fit(X, y)
  feats = [one._features(X, i) for i in range(2)]
  direct = []
  for i, shift in enumerate((0, 1)):
    ctx_y = ((one.y_ + shift) % 3).astype(np.float32)
    lg = loaded.logits(feats[i][None], ctx_y[None], one._features(X[:7], i)[None])[0]
    pr = np.asarray(jax.nn.softmax(jnp.asarray(lg), -1))
    direct.append(np.roll(pr, -shift, axis=-1))
  np.testing.assert_allclose(one.predict_proba(X[:7]), np.mean(direct, 0), atol=1e-5)
  # Permuting the training rows does not change the predictions.
  perm = rng.permutation(30)
  p2 = jaxdl.PFNClassifier(tiny_classifier_weights, n_estimators=3).fit(X[perm], y[perm])
  np.testing.assert_allclose(p2.predict_proba(X[:7]), p, atol=1e-5)
  # Subsampled members each keep every class.
  sub = jaxdl.PFNClassifier(tiny_classifier_weights, n_estimators=3, subsample=6).fit(X, y)
  for rows in sub.rows_:
    assert len(rows) == 6 and len(set(sub.y_[rows])) == 3


def test_classifier_input_validation(tiny_classifier_weights):
  w = tiny_classifier_weights
  X = np.zeros((6, 3), np.float32)
  cases = [
      (lambda: jaxdl.PFNClassifier(w).fit(np.zeros((6, 5)), np.zeros(6)), "at most 4"),
      (lambda: jaxdl.PFNClassifier(w).fit(X, np.arange(6)), "classes"),
      (lambda: jaxdl.PFNClassifier(w).fit(np.zeros((51, 2)), np.zeros(51)), "50"),
      (lambda: jaxdl.PFNClassifier(w).fit(X, np.zeros(5)), "5 entries"),
      (lambda: jaxdl.PFNClassifier(w, n_estimators=0).fit(X, np.zeros(6)), "n_estimators"),
      (lambda: jaxdl.PFNClassifier(w).fit(X, np.zeros(6)).predict_proba(np.zeros((2, 4))),
       "expects 3"),
      (lambda: jaxdl.PFNRegressor(w).fit(X[:, :1], np.zeros(6)), "PFNClassifier"),
  ]
  for fn, match in cases:
    with pytest.raises(errors.UserError, match=match) as e:
      fn()
    _one_line(e)


def test_shipped_classifier_separates_gaussian_classes():
  # The shipped tabular PFN with no arguments: on two well separated Gaussian classes in 4
  # features it must classify held-out rows far better than chance.
  rng = np.random.default_rng(5)
  y = rng.integers(0, 2, 160)
  X = rng.normal(size=(160, 4)) + 2.5 * y[:, None] * np.array([1.0, -1.0, 0.0, 0.0])
  clf = jaxdl.PFNClassifier(n_estimators=2).fit(X[:60], y[:60])
  p = clf.predict_proba(X[60:])
  assert p.shape == (100, 2)
  assert np.mean(clf.predict(X[60:]) == y[60:]) > 0.9
  with pytest.raises(errors.UserError, match="NaN") as e:
    jaxdl.PFNClassifier().fit(X[:4], np.array([0.0, 1.0, np.nan, 1.0]))
  _one_line(e)
