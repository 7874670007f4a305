"""Optimizer chain and schedules from config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import errors
from jaxdl.train.defaults import default_config
from jaxdl.train.optim import create_optimizer, create_schedule


def _opt(**kw):
  c = default_config().optimizer
  c.update(kw)
  return c


def test_step_schedule_with_warmup():
  s = create_schedule(_opt(learning_rate=0.1, schedule="step", warmup_steps=10,
                           decay_boundaries=(0.5, 0.75), decay_factor=0.1), 100)
  np.testing.assert_allclose([s(0), s(5), s(10), s(49), s(50), s(74), s(75), s(99)],
                             [0, 0.05, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-5)


def test_cosine_schedule_endpoints_and_warmup_epochs():
  s = create_schedule(_opt(learning_rate=1.0, schedule="cosine", warmup_epochs=2.0), 110,
                      steps_per_epoch=5.0)
  np.testing.assert_allclose([s(0), s(10), s(60), s(110)], [0.0, 1.0, 0.5, 0.0], atol=1e-6)


def test_gradient_noise_variance_anneals_as_eta_over_one_plus_t_to_gamma():
  eta, gamma = 0.3, 0.55
  tx, _ = create_optimizer(_opt(name="sgd", learning_rate=1.0, grad_noise_eta=eta,
                                grad_noise_gamma=gamma), 10)
  params = {"w": jnp.zeros(200_000)}
  state = tx.init(params)
  zero = {"w": jnp.zeros(200_000)}
  update = jax.jit(tx.update)
  for t in range(4):
    updates, state = update(zero, state, params)
    var = float(jnp.var(updates["w"]))
    # Neelakantan et al.: variance eta / (1 + t)^gamma at update t = 0, 1, ...; the relative
    # Monte-Carlo error of a variance from 2e5 draws is about 0.3%.
    np.testing.assert_allclose(var, eta / (1 + t) ** gamma, rtol=0.02)


def test_weight_decay_only_on_kernels():
  tx, _ = create_optimizer(_opt(name="sgd", learning_rate=1.0, weight_decay=0.1,
                                weight_decay_on="kernels"), 10)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.1 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_allclose(updates["bias"], np.zeros(2))


def test_nesterov_momentum_matches_pytorch_formula():
  # PyTorch SGD(nesterov): b = mu b + g; p -= lr (g + mu b).
  tx, _ = create_optimizer(_opt(name="momentum", learning_rate=0.1, momentum=0.9,
                                nesterov=True), 10)
  p = {"w": jnp.array([1.0])}
  state = tx.init(p)
  b, w = 0.0, 1.0
  for g in (1.0, -2.0, 0.5):
    u, state = tx.update({"w": jnp.array([g])}, state, p)
    b = 0.9 * b + g
    w -= 0.1 * (g + 0.9 * b)
    p = {"w": p["w"] + u["w"]}
    np.testing.assert_allclose(p["w"], [w], rtol=1e-6)


def test_bad_optimizer_config():
  with pytest.raises(errors.ConfigError, match="adamw"):
    create_optimizer(_opt(name="adamx"), 10)
  with pytest.raises(errors.ConfigError, match="schedule"):
    create_optimizer(_opt(schedule="cosin"), 10)
