"""Tests for jaxdl.inference.pfn: the Riemann (bar) distribution and the prior samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxdl import errors
from jaxdl.inference import gp, pfn


@pytest.fixture(scope="module")
def bar():
  # Irregular borders (sorted normal draws) so that bucket widths differ a lot.
  borders = np.sort(np.random.default_rng(0).normal(size=41)).astype(np.float32)
  return pfn.BarDistribution(jnp.asarray(borders))


@pytest.fixture(scope="module")
def logits():
  return 2.0 * jax.random.normal(jax.random.key(1), (3, 40))


def _quadrature(bar):
  """Nodes and weights that integrate the bar density exactly inside the buckets (where it
  is constant) and finely on the half-normal tails (60 units on each side)."""
  b = np.asarray(bar.borders, np.float64)
  pieces = [np.linspace(b[0] - 60.0, b[1], 40_001), np.linspace(b[-2], b[-1] + 60.0, 40_001)]
  pieces += [np.linspace(b[k], b[k + 1], 41) for k in range(1, len(b) - 2)]
  nodes = np.concatenate([0.5 * (g[1:] + g[:-1]) for g in pieces])
  weights = np.concatenate([np.diff(g) for g in pieces])
  return nodes, weights


def _integrate(bar, logits, fn=lambda y: 1.0):
  """Integral of fn(y) q(y) dy for each row of logits [..., K]."""
  nodes, weights = _quadrature(bar)
  y = jnp.asarray(np.broadcast_to(nodes, logits.shape[:-1] + nodes.shape), jnp.float32)
  dens = np.exp(np.asarray(bar.log_prob(logits[..., None, :], y), np.float64))
  return np.sum(dens * fn(nodes) * weights, -1)


def test_log_density_integrates_to_one(bar, logits):
  np.testing.assert_allclose(_integrate(bar, logits), 1.0, atol=2e-4)


def test_mean_and_variance_match_numerical_moments(bar, logits):
  m1 = _integrate(bar, logits, lambda y: y)
  m2 = _integrate(bar, logits, lambda y: y * y)
  np.testing.assert_allclose(bar.mean(logits), m1, atol=2e-3)
  np.testing.assert_allclose(bar.variance(logits), m2 - m1 ** 2, rtol=3e-3, atol=2e-3)


def test_interior_density_is_bucket_probability_over_width(bar, logits):
  b = np.asarray(bar.borders)
  k = 7
  y = jnp.full((3,), 0.5 * (b[k] + b[k + 1]))
  p = jax.nn.softmax(logits, -1)[:, k]
  np.testing.assert_allclose(jnp.exp(bar.log_prob(logits, y)), p / (b[k + 1] - b[k]),
                             rtol=1e-4)


def test_cdf_and_icdf_are_inverse_and_match_density(bar, logits):
  b = np.asarray(bar.borders)
  for y in [b[0] - 2.0, b[1] - 0.01, 0.1, b[-2] + 0.01, b[-1] + 1.5]:
    num = _integrate(bar, logits, lambda t, y=y: (t <= y).astype(np.float64))
    np.testing.assert_allclose(bar.cdf(logits, jnp.full((3,), y)), num, atol=1e-3)
  q = jnp.asarray([1e-4, 0.3, 0.9999])
  np.testing.assert_allclose(bar.cdf(logits, bar.icdf(logits, q)), q, atol=2e-5)


def test_samples_match_histogram_of_density(bar, logits):
  # Samples from the icdf land in the buckets with the softmax probabilities (chi^2 test)
  # and follow the half-normal inside the outer buckets, beyond the borders included.
  n = 200_000
  ys = np.asarray(bar.sample(jax.random.key(2), logits[0], (n,)))
  b = np.asarray(bar.borders)
  counts = np.bincount(np.clip(np.searchsorted(b, ys, side="right") - 1, 0, 39), minlength=40)
  p = np.asarray(jax.nn.softmax(logits[0]), np.float64)
  keep = p * n > 20
  chi2 = np.sum((counts[keep] - n * p[keep]) ** 2 / (n * p[keep]))
  assert chi2 < stats.chi2.ppf(0.999, keep.sum() - 1)
  # Mass beyond the outer borders: half of each outer bucket's probability.
  below, above = np.mean(ys < b[0]), np.mean(ys > b[-1])
  for frac, pk in [(below, p[0]), (above, p[-1])]:
    se = np.sqrt(0.5 * pk * (1 - 0.5 * pk) / n)
    assert abs(frac - 0.5 * pk) < 5 * se + 1e-6
  # Histogram of samples inside a few interior buckets vs the density (flat inside).
  k = int(np.argmax(p[1:-1])) + 1
  inside = ys[(ys >= b[k]) & (ys < b[k + 1])]
  assert stats.kstest(inside, stats.uniform(b[k], b[k + 1] - b[k]).cdf).pvalue > 1e-3


def test_nll_is_minus_log_prob_and_full_support(bar, logits):
  y = jnp.asarray([-100.0, 0.0, 100.0])
  lp = bar.log_prob(logits, y)
  assert np.all(np.isfinite(lp))
  np.testing.assert_allclose(bar.nll(logits, y), -lp)


def test_borders_equal_mass_quantiles():
  y = np.random.default_rng(3).normal(size=200_000)
  b = pfn.borders_from_samples(y, 10)
  assert b.shape == (11,) and np.all(np.diff(b) > 0)
  np.testing.assert_allclose(b[1:-1], stats.norm.ppf(np.arange(1, 10) / 10), atol=0.02)
  with pytest.raises(errors.ConfigError, match="too few"):
    pfn.borders_from_samples(y[:10], 10)


def test_gp_prior_matches_kernel_covariance():
  kernel = gp.rbf(0.3, 1.5)
  sample = jax.jit(pfn.gp_prior(kernel, 0.05), static_argnums=(1, 2, 3))
  x, y = sample(jax.random.key(0), 4000, 3, 1)
  assert x.shape == (4000, 3, 1) and y.shape == (4000, 3)
  assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
  # Whitened by the Cholesky factor of k(x, x) + noise, each dataset's y is N(0, I).
  cov = jax.vmap(lambda xi: kernel(xi, xi))(x) + 0.05 * jnp.eye(3)
  z = np.asarray(jax.vmap(lambda c, yi: jax.scipy.linalg.solve_triangular(
      jnp.linalg.cholesky(c), yi, lower=True))(cov, y))
  np.testing.assert_allclose(z.T @ z / len(z), np.eye(3), atol=0.08)
  np.testing.assert_allclose(z.mean(0), 0.0, atol=0.06)


def test_bnn_and_mixture_priors_shapes_and_determinism():
  jit = lambda f: jax.jit(f, static_argnums=(1, 2, 3))
  reg = pfn.bnn_prior((8,), noise_std=0.1)
  cls = jit(pfn.bnn_classification_prior((8,), num_classes=3))
  x, y = jit(reg)(jax.random.key(0), 5, 7, 2)
  assert x.shape == (5, 7, 2) and y.shape == (5, 7)
  _, yc = cls(jax.random.key(0), 5, 7, 2)
  assert set(np.unique(np.asarray(yc))) <= {0.0, 1.0, 2.0}
  mix = jit(pfn.mixture_prior([reg, pfn.gp_prior(gp.rbf(0.5), 0.01)], [0.5, 0.5]))
  x1, y1 = mix(jax.random.key(4), 6, 7, 2)
  x2, y2 = mix(jax.random.key(4), 6, 7, 2)
  np.testing.assert_array_equal(y1, y2)
  # Different datasets of one batch come from different functions.
  assert np.std(np.asarray(y1).mean(1)) > 0


def test_scm_prior_building_blocks_and_errors():
  from jaxdl.inference import pfn_tabular
  t = jnp.asarray(np.random.default_rng(0).normal(size=200), jnp.float32)
  cls = np.asarray(jax.jit(pfn_tabular._rank_classes, static_argnums=(2, 3))(
      jax.random.key(1), t, 3, 5))
  # 3 classes (ids a permutation of 0..2) that are monotone in t: cut at 2 thresholds.
  assert set(np.unique(cls)) == {0, 1, 2}
  order = cls[np.argsort(np.asarray(t))]
  assert np.sum(order[1:] != order[:-1]) == 2
  z = jnp.asarray([-10.0, -4.0, 0.5, 4.0, 9.0])
  np.testing.assert_allclose(pfn_tabular.soft_clip(z), [-4 - np.log(7), -4, 0.5, 4,
                                                        4 + np.log(6)], rtol=1e-6)
  codes = np.asarray(jax.jit(pfn_tabular._discretize)(jax.random.key(2), t))
  assert codes.min() >= 0 and codes.max() <= 9 and np.all(codes == np.round(codes))
  # Codes are monotone in the feature (binning at thresholds).
  assert np.all(np.diff(codes[np.argsort(np.asarray(t))]) >= 0)
  with pytest.raises(errors.ConfigError, match="max_features"):
    pfn_tabular.scm_classification_prior(6, 3, width=12)(jax.random.key(0), 2, 10, 5)
  with pytest.raises(errors.ConfigError, match="width"):
    pfn_tabular.scm_classification_prior(16, 3, width=16)


@pytest.mark.slow
def test_scm_classification_prior_padding_labels_and_errors():
  from jaxdl.inference import pfn_tabular
  # Eager (un-jitted) draws of a tiny prior; even so this takes minutes on a loaded CPU
  # (compiling the jitted sampler takes 2-3 minutes), hence slow.
  sample = pfn_tabular.scm_classification_prior(6, 3, width=12, max_layers=2)
  x, y = sample(jax.random.key(0), 6, 40, 6)
  x, y = np.asarray(x), np.asarray(y)
  assert x.shape == (6, 40, 6) and y.shape == (6, 40) and np.all(np.isfinite(x))
  assert set(np.unique(y)) <= {0.0, 1.0, 2.0}
  for xi in x:
    # The used features come first; the padding columns are exactly zero.
    used = np.flatnonzero(np.abs(xi).max(0) > 0)
    d = used.max() + 1 if used.size else 0
    assert d >= 1 and np.all(xi[:, d:] == 0.0)
  x2, _ = sample(jax.random.key(0), 6, 40, 6)
  np.testing.assert_array_equal(np.asarray(x2), x)
  with pytest.raises(errors.ConfigError, match="max_features"):
    sample(jax.random.key(0), 2, 10, 5)
  with pytest.raises(errors.ConfigError, match="width"):
    pfn_tabular.scm_classification_prior(16, 3, width=16)
