"""Gradient noise (Neelakantan et al. 2015) as the grokking configs use it: optax.add_noise on
the raw gradient, before the optimizer, with variance eta / (1 + t)^gamma."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.train.defaults import default_config
from jaxdl.train.optim import create_optimizer


def _opt(**kw):
  c = default_config().optimizer
  c.update(kw)
  return c


def test_noise_goes_before_adam():
  # Zero gradients: with the noise before Adam, Adam normalizes it and the first update of
  # every coordinate is -lr * sign(noise) * |n| / (|n| + eps) ~ lr in size, whatever eta is.
  # Noise added after Adam would leave updates of size ~ sqrt(eta) (here 3), not 1e-3.
  lr, eta = 1e-3, 9.0
  tx, _ = create_optimizer(_opt(name="adam", learning_rate=lr, grad_noise_eta=eta), 10)
  params = {"w": jnp.zeros((4096,))}
  state = tx.init(params)
  updates, state = tx.update({"w": jnp.zeros((4096,))}, state, params)
  u = np.abs(np.asarray(updates["w"]))
  np.testing.assert_allclose(u, lr, rtol=1e-4)


def test_noise_variance_at_step_t_with_sgd():
  # SGD with lr 1 on zero gradients: the update is minus the noise. Its variance at the
  # (t+1)-th update is eta / (t + 1)^gamma; 40,000 draws give a 1-sigma error of 0.7%.
  eta, gamma = 0.3, 0.55
  tx, _ = create_optimizer(_opt(name="sgd", learning_rate=1.0, grad_noise_eta=eta,
                                grad_noise_gamma=gamma), 100)
  params = {"w": jnp.zeros((40_000,))}
  state = tx.init(params)
  zeros = {"w": jnp.zeros((40_000,))}
  update = jax.jit(tx.update)
  for t in range(31):
    updates, state = update(zeros, state, params)
    if t in (0, 30):
      var = float(np.var(np.asarray(updates["w"])))
      np.testing.assert_allclose(var, eta / (t + 1) ** gamma, rtol=0.05)
