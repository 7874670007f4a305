"""Weight priors: densities against scipy/numpy, sampling statistics, NNGP of a wide net."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from jaxdl import errors, models
from jaxdl.inference import priors


@pytest.fixture(scope="module")
def mlp():
  model = models.create("mlp", features=(7,), activation="tanh", num_classes=2)
  params = model.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
  return model, params


def test_gaussian_log_prob_matches_scipy(mlp):
  _, params = mlp
  prior = priors.gaussian(params, init_std=1.3)
  hyper = prior.init()
  # A different std per leaf: rho -> softplus(rho).
  hyper = {"rho": jax.tree.map(lambda r, k: r + 0.1 * k, hyper["rho"],
                               {"dense_0": {"bias": 0., "kernel": 1.},
                                "head": {"bias": 2., "kernel": 3.}})}
  w = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  ref = 0.0
  for layer in ("dense_0", "head"):
    for kind in ("bias", "kernel"):
      sd = float(jax.nn.softplus(hyper["rho"][layer][kind]))
      x = np.asarray(w[layer][kind])
      if kind == "kernel":
        sd /= math.sqrt(x.shape[0])
      ref += stats.norm.logpdf(x, scale=sd).sum()
  np.testing.assert_allclose(prior.log_prob(hyper, w), ref, rtol=1e-5)


def test_gaussian_samples_have_fan_in_scaled_std(mlp):
  _, params = mlp
  prior = priors.gaussian(params, init_std=2.0)
  draws = prior.sample_many(jax.random.key(1), prior.init(), 4000)
  # dense_0 kernel: fan_in 3 -> std 2/sqrt(3); head kernel: fan_in 7; biases: 2.
  for (layer, kind), sd in {("dense_0", "kernel"): 2 / math.sqrt(3), ("head", "kernel"):
                            2 / math.sqrt(7), ("dense_0", "bias"): 2.0}.items():
    x = np.asarray(draws[layer][kind])
    assert x.shape[0] == 4000
    # Relative standard error of a std estimated from >= 8000 values is < 1%.
    np.testing.assert_allclose(x.std(), sd, rtol=0.05)


def test_per_parameter_prior_and_reparameterized_gradient(mlp):
  _, params = mlp
  prior = priors.gaussian(params, per="parameter", init_std=1.0)
  hyper = prior.init()
  assert hyper["rho"]["dense_0"]["kernel"].shape == (3, 7)

  # E[sum w^2] = sum std^2 * scale^2: the gradient of its MC estimate wrt rho must match.
  def mc(h, key):
    d = prior.sample_many(key, h, 4000)
    return sum(jnp.mean(jnp.sum(x.reshape(x.shape[0], -1) ** 2, -1))
               for x in jax.tree.leaves(d))

  def exact(h):
    sds = jax.tree.leaves(prior.std(h))
    return sum(jnp.sum(s ** 2 * c ** 2 * jnp.ones(shape)) for s, c, shape in
               zip(sds, prior.layout.scales, prior.layout.shapes))
  g_mc = jax.grad(mc)(hyper, jax.random.key(3))
  g_ex = jax.grad(exact)(hyper)
  for a, b in zip(jax.tree.leaves(g_mc), jax.tree.leaves(g_ex)):
    np.testing.assert_allclose(a, b, rtol=0.1, atol=1e-3)


def test_hierarchical_marginal_matches_quadrature():
  params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros((2,))}
  prior = priors.hierarchical(params, init_shape=2.0, init_rate=1.5)
  hyper = prior.init()
  w = {"w": jnp.array([[0.3, -1.0], [0.5, 0.1], [-0.7, 0.2]]), "b": jnp.array([1.2, -0.4])}

  def leaf_marginal(x, scale):
    # int prod N(x_i; 0, scale^2 / tau) Gamma(tau; 2, rate 1.5) dtau
    f = lambda tau: (np.prod(stats.norm.pdf(x, scale=scale / np.sqrt(tau)))
                     * stats.gamma.pdf(tau, 2.0, scale=1 / 1.5))
    return math.log(integrate.quad(f, 0, np.inf, limit=200)[0])
  ref = (leaf_marginal(np.asarray(w["w"]).ravel(), 1 / math.sqrt(3))
         + leaf_marginal(np.asarray(w["b"]), 1.0))
  np.testing.assert_allclose(prior.log_prob(hyper, w), ref, rtol=1e-4)


def test_hierarchical_gibbs_draws_the_conjugate_conditional():
  params = {"w": jnp.zeros((4, 5))}
  prior = priors.hierarchical(params, init_shape=1.0, init_rate=1.0, fan_in_scaling=False)
  hyper = prior.init()
  w = {"w": jnp.full((4, 5), 0.5)}
  stds = jax.vmap(lambda k: prior.gibbs_std(k, hyper, w)["w"])(
      jax.random.split(jax.random.key(0), 20000))
  tau = 1.0 / np.asarray(stds) ** 2
  # Gamma(1 + 20/2, rate 1 + 20 * 0.25 / 2): mean 11 / 3.5.
  mean = 11 / 3.5
  se = math.sqrt(11) / 3.5 / math.sqrt(20000)
  assert abs(tau.mean() - mean) < 5 * se


def test_prior_rejects_a_different_tree(mlp):
  _, params = mlp
  prior = priors.gaussian(params)
  with pytest.raises(errors.ShapeError, match="structure"):
    prior.log_prob(prior.init(), {"dense_0": params["dense_0"]})
  with pytest.raises(errors.ConfigError, match="per="):
    priors.gaussian(params, per="unit")


def _erf_nngp(x, sw, sb, sv, sc):
  """Closed-form kernel of f(x) = sum_j v_j erf(w_j x + b_j) + c, w ~ N(0, sw^2),
  b ~ N(0, sb^2), v ~ N(0, sv^2 / H), c ~ N(0, sc^2) (Williams 1997)."""
  s12 = sw ** 2 * np.outer(x, x) + sb ** 2
  d = 1 + 2 * np.diag(s12)
  return sc ** 2 + sv ** 2 * 2 / np.pi * np.arcsin(2 * s12 / np.sqrt(np.outer(d, d)))


def test_wide_network_prior_matches_its_nngp_kernel():
  model = models.create("mlp", features=(512,), activation="erf", num_classes=1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))["params"]
  prior = priors.gaussian(params, init_std=1.5)
  x = np.linspace(-2, 2, 5, dtype=np.float32)[:, None]
  draws = prior.sample_many(jax.random.key(2), prior.init(), 20000)
  f = np.asarray(jax.vmap(lambda p: model.apply({"params": p}, x))(draws))[..., 0]
  emp = np.cov(f.T)
  ref = _erf_nngp(x[:, 0], 1.5, 1.5, 1.5, 1.5)
  # MC error of a covariance entry ~ sqrt(2) * var / sqrt(20000) ~ 0.05 for var ~ 5; finite
  # width adds O(1/H).
  np.testing.assert_allclose(emp, ref, atol=0.25, rtol=0.05)
