"""Bayesian model averages and their test metrics.

Given S posterior samples (predictions of S networks on the same test inputs):

Regression (Gaussian likelihood with noise variance s^2):
* `regression_moments`: the BMA's predictive mean mean_s f_s(x) and variance
  var_s f_s(x) + s^2 (optbnn `RegressionNet.predict`; the variance uses 1/S).
* `gaussian_nll` with `kind="moment_matched"` (default, the functional-prior paper's
  number): -log N(y; mean, variance) of that moment-matched Gaussian. `kind="mixture"`:
  -log (1/S) sum_s N(y; f_s(x), s^2), the exact density of the BMA mixture. Both are
  averaged over test points; in original units when `y_scale` (the training std of y) is
  given: predictions and variance are rescaled and the NLL gains + log(y_scale).
* `rmse` of the predictive mean.

Classification: `classification_probs` averages the S softmax probabilities (the BMA);
`classification_metrics` returns accuracy, NLL of the averaged probabilities, Brier score
(sum over classes of squared error, averaged over points) and ECE (see
`jaxdl.analysis.calibration` for the binning).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import errors


def regression_moments(samples, noise_variance: float):
  """samples: [S, n] (or [S, n, 1]) -> (mean [n], variance [n])."""
  f = samples.reshape(samples.shape[0], samples.shape[1])
  return jnp.mean(f, 0), jnp.var(f, 0) + noise_variance


def gaussian_nll(samples, targets, noise_variance: float, *, kind: str = "moment_matched",
                 y_mean: float = 0.0, y_scale: float = 1.0):
  """Average test negative log likelihood of the BMA.

  Args:
    samples: [S, n] predictions on the training targets' (standardized) scale.
    targets: [n] targets in ORIGINAL units.
    noise_variance: observation noise on the standardized scale.
    kind: "moment_matched" or "mixture" (see the module docstring).
    y_mean, y_scale: the training standardization y_std = (y - y_mean) / y_scale.
  """
  f = samples.reshape(samples.shape[0], samples.shape[1]) * y_scale + y_mean
  y = jnp.asarray(targets, f.dtype)
  if kind == "moment_matched":
    mean, var = jnp.mean(f, 0), jnp.var(f, 0) + noise_variance * y_scale ** 2
    return jnp.mean(0.5 * jnp.log(2 * jnp.pi * var) + 0.5 * jnp.square(y - mean) / var)
  if kind == "mixture":
    var = noise_variance * y_scale ** 2
    logp = -0.5 * jnp.log(2 * jnp.pi * var) - 0.5 * jnp.square(y[None] - f) / var
    return -jnp.mean(jax.scipy.special.logsumexp(logp, axis=0) - math.log(f.shape[0]))
  raise errors.ConfigError(f"kind={kind!r} is not known; use 'moment_matched' or 'mixture'.")


def rmse(samples, targets, *, y_mean: float = 0.0, y_scale: float = 1.0):
  """RMSE of the BMA mean in original units; samples [S, n] standardized, targets [n]."""
  f = samples.reshape(samples.shape[0], samples.shape[1]) * y_scale + y_mean
  return jnp.sqrt(jnp.mean(jnp.square(jnp.mean(f, 0) - jnp.asarray(targets, f.dtype))))


def regression_metrics(samples, targets, noise_variance: float, *, y_mean: float = 0.0,
                       y_scale: float = 1.0) -> dict:
  """`{"rmse", "nll" (moment-matched), "nll_mixture"}` as Python floats."""
  kw = dict(y_mean=y_mean, y_scale=y_scale)
  return {"rmse": float(rmse(samples, targets, **kw)),
          "nll": float(gaussian_nll(samples, targets, noise_variance, **kw)),
          "nll_mixture": float(gaussian_nll(samples, targets, noise_variance, kind="mixture",
                                            **kw))}


def classification_probs(logits):
  """logits: [S, n, C] -> BMA probabilities [n, C] (mean of the softmaxes)."""
  return jnp.mean(jax.nn.softmax(logits, axis=-1), axis=0)


def classification_metrics(probs, labels, *, num_bins: int = 15, binning: str = "width"
                           ) -> dict:
  """Accuracy, NLL, Brier and ECE of predicted probabilities [n, C] for labels [n]."""
  from jaxdl.analysis import calibration
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels).astype(np.int64)
  n, c = probs.shape
  if labels.shape != (n,):
    raise errors.ShapeError(f"labels have shape {labels.shape}, expected ({n},) to match "
                            f"probs {probs.shape}.")
  p_true = probs[np.arange(n), labels]
  onehot = np.eye(c)[labels]
  return {
      "accuracy": float(np.mean(np.argmax(probs, -1) == labels)),
      "nll": float(-np.mean(np.log(np.maximum(p_true, 1e-12)))),
      "brier": float(np.mean(np.sum(np.square(probs - onehot), -1))),
      "ece": float(calibration.expected_calibration_error(probs, labels, num_bins=num_bins,
                                                          binning=binning)),
  }
