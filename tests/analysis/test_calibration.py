"""ECE binning and reliability curves on constructed examples."""

import matplotlib
import numpy as np
import pytest

from jaxdl.analysis import calibration

matplotlib.use("Agg")


def _binary(conf, correct):
  """Two-class probabilities whose top-1 confidence is `conf` and correctness `correct`."""
  probs = np.stack([conf, 1 - conf], -1)
  labels = np.where(correct, 0, 1)
  return probs, labels


def test_ece_is_zero_when_confidence_equals_accuracy():
  conf = np.full(100, 0.8)
  probs, labels = _binary(conf, np.arange(100) < 80)
  assert calibration.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_a_known_miscalibration_and_bin_edges():
  # 50 predictions at 0.95 with 60% accuracy and 50 at 0.6 with 60% accuracy:
  # ECE = 0.5 * |0.95 - 0.6| + 0.5 * 0 = 0.175.
  conf = np.r_[np.full(50, 0.95), np.full(50, 0.6)]
  correct = np.r_[np.arange(50) < 30, np.arange(50) < 30]
  probs, labels = _binary(conf, correct)
  assert calibration.expected_calibration_error(probs, labels, num_bins=10) == pytest.approx(
      0.175)
  # Right-closed bins: 0.6 lies in (0.5, 0.6], not in (0.6, 0.7].
  mean_conf, acc, counts = calibration.reliability_curve(probs, labels, num_bins=10)
  assert counts[5] == 50 and counts[6] == 0 and counts[9] == 50


def test_equal_mass_bins_have_equal_counts():
  rng = np.random.default_rng(0)
  conf = rng.uniform(0.5, 1.0, 1000)
  probs, labels = _binary(conf, rng.uniform(size=1000) < conf)
  _, _, counts = calibration.reliability_curve(probs, labels, num_bins=20, binning="mass")
  assert np.all(counts == 50)
  # Calibrated by construction: the ECE is only sampling noise.
  assert calibration.expected_calibration_error(probs, labels, binning="mass") < 0.06


def test_regression_calibration_of_exact_gaussians():
  rng = np.random.default_rng(1)
  mean, var = rng.normal(size=5000), rng.uniform(0.5, 2, 5000)
  y = mean + np.sqrt(var) * rng.normal(size=5000)
  levels, observed, err = calibration.regression_calibration(mean, var, y)
  np.testing.assert_allclose(observed, levels, atol=0.03)
  _, _, err_bad = calibration.regression_calibration(mean, var / 4, y)
  assert err_bad > 10 * err


def test_plots_draw():
  import matplotlib.pyplot as plt
  probs, labels = _binary(np.full(10, 0.7), np.arange(10) < 7)
  ax = calibration.plot_reliability(probs, labels)
  calibration.plot_regression_calibration(np.zeros(10), np.ones(10), np.zeros(10))
  assert len(ax.lines) >= 2
  plt.close("all")
