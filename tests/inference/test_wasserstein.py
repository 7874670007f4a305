"""Wasserstein prior fitting: the estimate orders distances; fitting recovers a known std."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import models
from jaxdl.inference import gp, priors, wasserstein

X = jnp.linspace(-2.0, 2.0, 8)[:, None]


def _critic_estimate(key, f_p, f_q, f_p_test, f_q_test):
  critic, _ = wasserstein.train_critic(key, f_p, f_q, num_steps=300, learning_rate=0.05,
                                       hidden=64)
  return float(wasserstein.wasserstein_estimate(critic, f_p_test, f_q_test))


def test_wasserstein_estimate_orders_gp_pairs():
  """W1(GP(var 1), GP(var 4)) > W1(GP(var 1), GP(var 1)) ~ 0, evaluated on fresh draws."""
  k1, k4 = gp.rbf(1.0, 1.0), gp.rbf(1.0, 4.0)
  keys = jax.random.split(jax.random.key(0), 8)
  n = 512
  draw = lambda k, kern: gp.sample_prior(k, kern, X, n)[..., None]
  same = _critic_estimate(keys[0], draw(keys[1], k1), draw(keys[2], k1), draw(keys[3], k1),
                          draw(keys[4], k1))
  diff = _critic_estimate(keys[0], draw(keys[5], k4), draw(keys[2], k1), draw(keys[6], k4),
                          draw(keys[4], k1))
  # For Y = 2X in distribution, W1 = E||Y - X|| = E||X|| exactly: the coupling Y = 2X
  # attains the bound of the 1-Lipschitz function ||.||. The critic (penalized, trained on
  # 512 draws, evaluated on fresh ones) must find it within 25%.
  exact = float(jnp.mean(jnp.linalg.norm(draw(keys[7], k1)[..., 0], axis=-1)))
  assert 0.75 * exact < diff < 1.25 * exact, (diff, exact)
  assert abs(same) < 0.1 * exact, same


def _erf_nngp_kernel(sv):
  """NNGP of a 1-hidden-layer erf net with all stds 1 except the output weights' (sv)."""
  def k(a, b):
    s12 = a @ b.T + 1.0
    da = 1 + 2 * (jnp.sum(a * a, -1) + 1.0)
    db = 1 + 2 * (jnp.sum(b * b, -1) + 1.0)
    return 1.0 + sv ** 2 * 2 / jnp.pi * jnp.arcsin(2 * s12 / jnp.sqrt(da[:, None] * db[None]))
  return k


def test_fitting_recovers_a_known_prior_std():
  """A wide erf network's function-space prior is the NNGP in closed form; fitting the
  output-weight std to the NNGP with sv = 2 must find 2 (starting from 1)."""
  model = models.create("mlp", features=(256,), activation="erf", num_classes=1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))["params"]
  prior = priors.gaussian(params, init_std=1.0)
  apply_fn = lambda p, x: model.apply({"params": p}, x)
  target_k = _erf_nngp_kernel(2.0)

  def target(key, x, n, data):
    chol = jnp.linalg.cholesky(target_k(x, x) + 1e-5 * jnp.eye(x.shape[0]))
    return jax.random.normal(key, (n, x.shape[0])) @ chol.T
  trainable = {"rho": {"dense_0": {"bias": False, "kernel": False},
                       "head": {"bias": False, "kernel": True}}}
  init, step = wasserstein.build_fit(
      prior, apply_fn, target, lambda key, data: X, num_functions=256, critic_steps=60,
      critic_lr=0.05, prior_lr=0.05, critic_hidden=64, trainable=trainable)
  run = jax.jit(lambda s: jax.lax.scan(lambda c, _: (step(c)[0],
                                                     jax.nn.softplus(c.hyper["rho"]["head"]
                                                                     ["kernel"])),
                                       s, None, length=50))
  state, stds = run(init(jax.random.key(1)))
  stds = np.asarray(stds)
  assert stds[0] == pytest.approx(1.0, abs=0.05)
  # Fixed leaves stay fixed; the fitted std settles around the truth.
  assert float(jax.nn.softplus(state.hyper["rho"]["dense_0"]["kernel"])) == pytest.approx(1.0)
  assert abs(stds[-20:].mean() - 2.0) < 0.2, stds[-20:]
