"""Calibration of probabilistic predictions: ECE, reliability curves and their plots.

Classification (Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks",
ICML 2017, eq. 3): the confidence of a prediction is its top-1 probability. Predictions are
binned by confidence and

  ECE = sum_b (|B_b| / n) * |accuracy(B_b) - mean confidence(B_b)|.

Binning, stated because published ECEs depend on it:
* `binning="width"` (default, Guo et al.): `num_bins` equal-width bins on [0, 1]; a
  confidence c falls in bin b when b/num_bins < c <= (b+1)/num_bins (bin 0 includes 0).
  15 bins by default.
* `binning="mass"`: equal-mass bins (google-research bnn_hmc uses 20 of them): the sorted
  confidences are split into `num_bins` groups of (almost) equal size.
Empty bins contribute nothing.

Regression (Kuleshov, Fenner, Ermon, ICML 2018, eq. 8-9): for Gaussian predictions, the
observed frequency of y <= the p-quantile against p, and the calibration error
sum_j (p_j - observed_j)^2 over `num_levels` levels p_j = j / num_levels.
"""

from __future__ import annotations

import numpy as np

from jaxdl import errors


def _confidences(probs, labels):
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels).astype(np.int64)
  if probs.ndim != 2 or labels.shape != (probs.shape[0],):
    raise errors.ShapeError(f"expected probs [n, classes] and labels [n], got {probs.shape} "
                            f"and {labels.shape}.")
  return probs.max(-1), (probs.argmax(-1) == labels).astype(np.float64)


def _bin_index(conf, num_bins, binning):
  if binning == "width":
    return np.clip(np.ceil(conf * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
  if binning == "mass":
    order = np.argsort(conf, kind="stable")
    idx = np.empty(conf.shape[0], np.int64)
    idx[order] = np.arange(conf.shape[0]) * num_bins // max(conf.shape[0], 1)
    return idx
  raise errors.ConfigError(f"binning={binning!r} is not known; use 'width' or 'mass'.")


def reliability_curve(probs, labels, *, num_bins: int = 15, binning: str = "width"):
  """Per-bin (mean confidence, accuracy, count), each [num_bins]; empty bins give NaN."""
  conf, correct = _confidences(probs, labels)
  idx = _bin_index(conf, num_bins, binning)
  counts = np.bincount(idx, minlength=num_bins).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_conf = np.bincount(idx, conf, num_bins) / counts
    acc = np.bincount(idx, correct, num_bins) / counts
  return mean_conf, acc, counts


def expected_calibration_error(probs, labels, *, num_bins: int = 15,
                               binning: str = "width") -> float:
  """ECE of top-1 confidences (see the module docstring for the binning)."""
  mean_conf, acc, counts = reliability_curve(probs, labels, num_bins=num_bins,
                                             binning=binning)
  nz = counts > 0
  return float(np.sum(counts[nz] / counts.sum() * np.abs(acc[nz] - mean_conf[nz])))


def regression_calibration(mean, variance, targets, *, num_levels: int = 10):
  """(expected levels [L], observed levels [L], calibration error) for Gaussian predictions."""
  from scipy.stats import norm
  cdf = norm.cdf(np.asarray(targets), loc=np.asarray(mean), scale=np.sqrt(variance))
  levels = np.arange(1, num_levels + 1) / num_levels
  observed = np.array([np.mean(cdf <= p) for p in levels])
  return levels, observed, float(np.sum(np.square(levels - observed)))


def plot_reliability(probs, labels, *, num_bins: int = 15, binning: str = "width", ax=None,
                     label: str | None = None):
  """Reliability diagram (accuracy against confidence per bin, with the diagonal)."""
  import matplotlib.pyplot as plt
  ax = ax or plt.gca()
  mean_conf, acc, counts = reliability_curve(probs, labels, num_bins=num_bins,
                                             binning=binning)
  nz = counts > 0
  ece = expected_calibration_error(probs, labels, num_bins=num_bins, binning=binning)
  ax.plot([0, 1], [0, 1], "k--", lw=1)
  ax.plot(mean_conf[nz], acc[nz], "o-", label=f"{label or 'model'} (ECE {ece:.3f})")
  ax.set_xlabel("confidence")
  ax.set_ylabel("accuracy")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.legend(loc="upper left")
  return ax


def plot_regression_calibration(mean, variance, targets, *, num_levels: int = 10, ax=None,
                                label: str | None = None):
  """Observed against expected quantile levels for Gaussian predictive distributions."""
  import matplotlib.pyplot as plt
  ax = ax or plt.gca()
  levels, observed, err = regression_calibration(mean, variance, targets,
                                                 num_levels=num_levels)
  ax.plot([0, 1], [0, 1], "k--", lw=1)
  ax.plot(levels, observed, "o-", label=f"{label or 'model'} (cal. error {err:.3f})")
  ax.set_xlabel("expected confidence level")
  ax.set_ylabel("observed confidence level")
  ax.legend(loc="upper left")
  return ax


__all__ = ["expected_calibration_error", "reliability_curve", "regression_calibration",
           "plot_reliability", "plot_regression_calibration"]
