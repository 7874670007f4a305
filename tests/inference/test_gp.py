"""GP kernels and the exact posterior against float64 numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.inference import gp


def _np_rbf(a, b, ls, var):
  d2 = (((a[:, None, :] - b[None, :, :]) / ls) ** 2).sum(-1)
  return var * np.exp(-0.5 * d2)


def _np_matern(a, b, ls, var, nu):
  r = np.sqrt((((a[:, None, :] - b[None, :, :]) / ls) ** 2).sum(-1))
  if nu == 0.5:
    return var * np.exp(-r)
  if nu == 1.5:
    return var * (1 + np.sqrt(3) * r) * np.exp(-np.sqrt(3) * r)
  return var * (1 + np.sqrt(5) * r + 5 * r ** 2 / 3) * np.exp(-np.sqrt(5) * r)


@pytest.fixture(scope="module")
def points():
  rng = np.random.default_rng(0)
  return rng.normal(size=(7, 3)), rng.normal(size=(5, 3))


def test_kernels_match_numpy(points):
  a, b = points
  ls = np.array([0.5, 1.0, 2.0])
  np.testing.assert_allclose(gp.rbf(ls, 1.7)(a, b), _np_rbf(a, b, ls, 1.7), rtol=1e-5, atol=1e-6)
  for fn, nu in [(gp.matern12, 0.5), (gp.matern32, 1.5), (gp.matern52, 2.5)]:
    np.testing.assert_allclose(fn(ls, 0.8)(a, b), _np_matern(a, b, ls, 0.8, nu),
                               rtol=1e-4, atol=1e-5)
  per = gp.periodic(0.7, 2.0, 1.2)(a, b)
  ref = 1.2 * np.exp(-2 * (np.sin(np.pi * (a[:, None] - b[None]) / 2.0) ** 2).sum(-1) / 0.49)
  np.testing.assert_allclose(per, ref, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(gp.linear(2.0, 0.5)(a, b), 2.0 * a @ b.T + 0.5, rtol=1e-5, atol=1e-5)
  k = gp.rbf(1.0, 1.0) + gp.linear(1.0) * gp.matern32(1.0, 2.0)
  ref = _np_rbf(a, b, 1.0, 1.0) + (a @ b.T) * _np_matern(a, b, 1.0, 2.0, 1.5)
  np.testing.assert_allclose(k(a, b), ref, rtol=1e-4, atol=1e-5)


def test_matern_gradient_finite_at_zero_distance():
  g = jax.grad(lambda x: gp.matern12(1.0, 1.0)(x, x).sum())(jnp.ones((2, 2)))
  assert np.all(np.isfinite(g))


def test_kernel_is_a_pytree_usable_under_vmap(points):
  a, _ = points
  ls = jnp.array([0.5, 1.0, 3.0])
  out = jax.vmap(lambda l: gp.rbf(l, 1.0)(a, a))(ls)
  for i, l in enumerate(ls):
    np.testing.assert_allclose(out[i], _np_rbf(a, a, float(l), 1.0), rtol=1e-5, atol=1e-6)
  k = gp.rbf(0.3, 2.0) * gp.periodic(1.0, 3.0, 1.0)
  k2 = jax.tree.unflatten(jax.tree.structure(k), jax.tree.leaves(k))
  np.testing.assert_allclose(jax.jit(lambda kk: kk(a, a))(k2), k(a, a), rtol=1e-5, atol=1e-9)


def test_posterior_matches_float64_numpy():
  rng = np.random.default_rng(1)
  x = rng.uniform(-3, 3, size=(20, 2))
  y = np.sin(x[:, 0]) + 0.1 * rng.normal(size=20)
  xs = rng.uniform(-3, 3, size=(9, 2))
  ls, var, noise = np.array([0.9, 1.4]), 1.3, 0.05
  kxx = _np_rbf(x, x, ls, var) + noise * np.eye(20)
  ksx = _np_rbf(x, xs, ls, var)
  mean_ref = ksx.T @ np.linalg.solve(kxx, y)
  cov_ref = _np_rbf(xs, xs, ls, var) - ksx.T @ np.linalg.solve(kxx, ksx)
  mean64, cov64 = gp.posterior(gp.rbf(ls, var), x, y, xs, noise, dtype=jnp.float64)
  assert mean64.dtype == np.float64
  np.testing.assert_allclose(mean64, mean_ref, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(cov64, cov_ref, rtol=1e-9, atol=1e-12)
  mean32, var32 = gp.posterior(gp.rbf(ls, var), x, y, xs, noise, full_cov=False)
  np.testing.assert_allclose(mean32, mean_ref, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(var32, np.diag(cov_ref), rtol=1e-2, atol=1e-4)
  # Predictive density of noisy observations.
  ys = np.sin(xs[:, 0])
  lp = gp.predictive_log_density(gp.rbf(ls, var), x, y, xs, ys, noise, dtype=jnp.float64)
  v = np.diag(cov_ref) + noise
  np.testing.assert_allclose(lp, -0.5 * (np.log(2 * np.pi * v) + (ys - mean_ref) ** 2 / v),
                             rtol=1e-9)


def test_log_marginal_likelihood_matches_numpy():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(15, 1))
  y = rng.normal(size=15)
  kxx = _np_rbf(x, x, 0.7, 1.0) + 0.1 * np.eye(15)
  ref = (-0.5 * y @ np.linalg.solve(kxx, y) - 0.5 * np.linalg.slogdet(kxx)[1]
         - 7.5 * np.log(2 * np.pi))
  got = gp.log_marginal_likelihood(gp.rbf(0.7, 1.0), jnp.asarray(x), jnp.asarray(y), 0.1)
  np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_prior_samples_have_the_kernel_covariance():
  x = jnp.linspace(-2, 2, 6)[:, None]
  k = gp.matern52(0.8, 1.5)
  f = gp.sample_prior(jax.random.key(0), k, x, 40000)
  emp = np.cov(np.asarray(f).T)
  # Monte-Carlo error of a covariance entry is about sqrt(2) * var / sqrt(n) ~ 0.011.
  np.testing.assert_allclose(emp, k(x, x), atol=0.06)


def test_hyperprior_samples_have_the_mixture_covariance():
  """Functions whose RBF hyperparameters are redrawn per sample: their covariance is
  E_theta[k_theta(x, x')], computed here by Monte Carlo over theta in numpy."""
  x = np.array([[0.0, 0.0], [0.5, -0.3], [2.0, 1.0]])
  hp = {"lengthscale": gp.lognormal(np.log([1.0, 2.0]), 0.5),
        "variance": gp.lognormal(0.1, 0.5)}
  f = gp.sample_prior_with_hyperpriors(jax.random.key(0), gp.rbf, hp, x, 40000,
                                       transform=jax.nn.softplus)
  rng = np.random.default_rng(0)
  m = 200000
  softplus = lambda z: np.log1p(np.exp(z))
  ls = softplus(np.exp(np.log([1.0, 2.0]) + 0.5 * rng.normal(size=(m, 2))))
  var = softplus(np.exp(0.1 + 0.5 * rng.normal(size=m)))
  d2 = (((x[:, None, None, :] - x[None, :, None, :]) / ls[None, None]) ** 2).sum(-1)
  ref = (var[None, None] * np.exp(-0.5 * d2)).mean(-1)
  # MC error of an entry: sqrt(E[f_i^2 f_j^2] / 40000) < 0.02 here.
  np.testing.assert_allclose(np.cov(np.asarray(f).T), ref, atol=0.08)


def test_sampling_survives_a_singular_kernel_matrix():
  x = jnp.zeros((5, 1))  # identical points: K is rank one
  f = gp.sample_prior(jax.random.key(1), gp.rbf(1.0, 1.0), x, 8, jitter=1e-12)
  assert np.all(np.isfinite(f))
  # All five values of a function coincide (up to the added jitter).
  assert float(jnp.max(jnp.std(f, axis=1))) < 1e-2
