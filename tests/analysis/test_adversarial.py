"""FGSM / PGD: closed forms on a linear model, eps-ball and data-range invariants, accuracy drop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import errors
from jaxdl.analysis import adversarial_accuracy, fgsm, pgd
from jaxdl.analysis.adversarial import accuracy
from jaxdl.models.mlp import MLP

# A linear 2-class model: logits = x W + b. For cross-entropy the input gradient of example
# (x, y) is p_other (w_other - w_y), so FGSM (L-inf) must give x + eps sign(w_other - w_y) and
# the L2 step x + eps (w_other - w_y) / ||w_other - w_y|| -- the optimal attacks on the margin.
_LIN = MLP(num_classes=2, features=())
_W = np.array([[1.0, -2.0], [0.5, 0.25], [-1.5, 1.0], [0.0, 3.0]], np.float32)
_LIN_VARS = {"params": {"head": {"kernel": jnp.asarray(_W), "bias": jnp.asarray([0.1, -0.1])}}}


def _linear_direction(y):
  d = _W[:, 1] - _W[:, 0]                       # w_1 - w_0
  return np.where(np.asarray(y)[:, None] == 0, d, -d)  # w_other - w_y


def test_fgsm_linear_closed_form():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 4)).astype(np.float32)
  y = rng.integers(0, 2, size=32)
  d = _linear_direction(y)
  got = fgsm(_LIN.apply, _LIN_VARS, x, y, eps=0.1)
  np.testing.assert_allclose(np.asarray(got), x + 0.1 * np.sign(d), atol=1e-6)
  got2 = fgsm(_LIN.apply, _LIN_VARS, x, y, eps=0.1, norm="l2")
  np.testing.assert_allclose(np.asarray(got2), x + 0.1 * d / np.linalg.norm(d, axis=1,
                                                                            keepdims=True),
                             atol=1e-5)


def test_pgd_linear_reaches_the_optimal_corner():
  # On a linear model the loss increases along sign(d) from any start, so PGD ends at the
  # eps-ball corner x + eps sign(d) (coordinates with d = 0 stay where the start put them).
  rng = np.random.default_rng(1)
  x = rng.normal(size=(16, 4)).astype(np.float32)
  y = rng.integers(0, 2, size=16)
  d = _linear_direction(y)
  got = pgd(_LIN.apply, _LIN_VARS, x, y, eps=0.2, step_size=0.05, num_steps=10,
            rng_key=jax.random.key(0))
  nz = d != 0
  np.testing.assert_allclose(np.asarray(got)[nz], (x + 0.2 * np.sign(d))[nz], atol=1e-6)
  assert np.all(np.abs(np.asarray(got) - x) <= 0.2 + 1e-6)


@pytest.fixture(scope="module")
def trained():
  """A small MLP trained to ~100% on two well-separated classes of 8-d points in [0, 1]."""
  rng = np.random.default_rng(0)
  n = 256
  y = rng.integers(0, 2, size=n)
  centers = np.where(y[:, None] == 0, 0.35, 0.65)
  x = np.clip(centers + 0.08 * rng.normal(size=(n, 8)), 0.0, 1.0).astype(np.float32)
  model = MLP(num_classes=2, features=(32,))
  params = model.init(jax.random.key(0), x[:2])["params"]
  opt = optax.adam(1e-2)
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    def loss(p):
      logits = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    g = jax.grad(loss)(params)
    upd, state = opt.update(g, state, params)
    return optax.apply_updates(params, upd), state

  for _ in range(150):
    params, state = step(params, state)
  variables = {"params": params}
  assert accuracy(model.apply, variables, x, y) > 0.97
  return model, variables, x, y


@pytest.mark.parametrize("norm,eps,step", [("linf", 0.2, 0.05), ("l2", 0.5, 0.15)])
def test_pgd_stays_in_ball_and_range_and_lowers_accuracy(trained, norm, eps, step):
  model, variables, x, y = trained
  x_adv = pgd(model.apply, variables, x, y, eps=eps, step_size=step, num_steps=10, norm=norm,
              rng_key=jax.random.key(1), clip_min=0.0, clip_max=1.0)
  x_adv = np.asarray(x_adv)
  delta = x_adv - x
  size = np.max(np.abs(delta), 1) if norm == "linf" else np.linalg.norm(delta, axis=1)
  assert np.all(size <= eps * (1 + 1e-5))
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  assert np.mean(size) > 0.5 * eps  # It did move.
  clean = accuracy(model.apply, variables, x, y)
  adv = accuracy(model.apply, variables, x_adv, y)
  assert adv < clean - 0.3
  # A random point of the same ball hurts far less than the attack.
  noise = np.clip(x + np.sign(np.random.default_rng(2).normal(size=x.shape)) * eps /
                  (1 if norm == "linf" else np.sqrt(x.shape[1])), 0, 1).astype(np.float32)
  assert accuracy(model.apply, variables, noise, y) > adv + 0.2


def test_adversarial_accuracy_matches_one_batch(trained):
  model, variables, x, y = trained
  kw = dict(eps=0.1, step_size=0.03, num_steps=10, clip_min=0.0, clip_max=1.0)
  # Without a random start the attack is deterministic: batching must not change it.
  whole = adversarial_accuracy(model.apply, variables, x, y, batch_size=len(x), **kw)
  batched = adversarial_accuracy(model.apply, variables, x, y, batch_size=64, **kw)
  direct = accuracy(model.apply, variables, pgd(model.apply, variables, x, y, **kw), y)
  assert whole == pytest.approx(direct) and batched == pytest.approx(direct)
  # PGD is at least as strong as its first step with the same budget, here strictly.
  f = adversarial_accuracy(model.apply, variables, x, y, attack="fgsm", eps=0.1,
                           clip_min=0.0, clip_max=1.0)
  assert whole <= f


def test_bad_arguments():
  x = np.zeros((2, 4), np.float32)
  y = np.zeros((2,), np.int32)
  with pytest.raises(errors.UnknownNameError, match="attack norm"):
    pgd(_LIN.apply, _LIN_VARS, x, y, eps=0.1, step_size=0.1, num_steps=1, norm="l1")
  with pytest.raises(errors.ConfigError, match="step_size"):
    pgd(_LIN.apply, _LIN_VARS, x, y, eps=0.1, step_size=0.0, num_steps=1)
  with pytest.raises(errors.UnknownNameError, match="attack"):
    adversarial_accuracy(_LIN.apply, _LIN_VARS, x, y, attack="cw", eps=0.1)
