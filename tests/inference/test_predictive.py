"""Bayesian-model-average metrics against direct numpy/scipy computations."""

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from jaxdl import errors
from jaxdl.inference import predictive


@pytest.fixture(scope="module")
def reg():
  rng = np.random.default_rng(0)
  return rng.normal(size=(30, 12)), rng.normal(size=12) * 4 + 20


def test_regression_metrics_in_original_units(reg):
  f, y = reg
  ym, ys, noise = 20.0, 4.0, 0.1
  m = predictive.regression_metrics(f, y, noise, y_mean=ym, y_scale=ys)
  fo = f * ys + ym
  mean, var = fo.mean(0), fo.var(0) + noise * ys ** 2
  np.testing.assert_allclose(m["rmse"], np.sqrt(np.mean((mean - y) ** 2)), rtol=1e-5)
  np.testing.assert_allclose(m["nll"], -stats.norm.logpdf(y, mean, np.sqrt(var)).mean(),
                             rtol=1e-5)
  mix = logsumexp(stats.norm.logpdf(y[None], fo, np.sqrt(noise) * ys), axis=0) - np.log(30)
  np.testing.assert_allclose(m["nll_mixture"], -mix.mean(), rtol=1e-5)
  # A mixture is at least as good as nothing: here both NLLs are finite and differ.
  assert m["nll_mixture"] != pytest.approx(m["nll"])


def test_classification_metrics():
  probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.5, 0.0]])
  labels = np.array([0, 2, 2, 1])
  m = predictive.classification_metrics(probs, labels, num_bins=10)
  assert m["accuracy"] == pytest.approx(0.5)   # argmax of row 4 is class 0
  np.testing.assert_allclose(m["nll"], -np.mean(np.log([0.7, 0.1, 0.4, 0.5])))
  onehot = np.eye(3)[labels]
  np.testing.assert_allclose(m["brier"], np.mean(((probs - onehot) ** 2).sum(-1)))
  with pytest.raises(errors.ShapeError):
    predictive.classification_metrics(probs, labels[:3])


def test_bma_probabilities_average_softmaxes():
  logits = np.random.default_rng(1).normal(size=(5, 4, 3))
  p = np.asarray(predictive.classification_probs(logits))
  ref = np.mean(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True), 0)
  np.testing.assert_allclose(p, ref, rtol=1e-5)
