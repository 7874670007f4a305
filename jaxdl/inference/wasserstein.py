"""Fitting weight priors to a GP in function space with the 1-Wasserstein distance.

Tran, Rossi, Milios, Filippone, "All You Need is a Good Functional Prior for Bayesian Deep
Learning" (JMLR 2022), sec. 3.1, eq. 5-8 and algorithm 1. For prior hyperparameters psi,

  W1(p_gp, p_nn(psi)) = sup_{||phi||_L <= 1} E_{f ~ p_nn(psi)}[phi(f(X))] - E_{f ~ p_gp}[phi(f(X))]

where f(X) is the vector of a function's values at M measurement points X. The Lipschitz
critic phi is an MLP (M -> 200 -> 200 -> 1, softplus) on that vector, trained with a
gradient penalty (Gulrajani et al. 2017; `penalty="gp"`, two-sided, optbnn's default) or its
one-sided variant (Petzka et al. 2018; `penalty="lp"`) with coefficient 10, re-initialized
at every outer iteration and trained with Adagrad inside a `lax.scan`. Then one RMSprop step
on psi follows the gradient of the critic's estimate through reparameterized network draws.

Faithful to optbnn (`prior_mappers/wasserstein_mapper.py`): the critic is trained on one set
of draws (GP and network, same X) and the prior gradient uses a fresh set; critic init is
Xavier-normal weights and N(0, 1) biases; training stops early (the remaining steps are
masked out) once the critic's gradient norm drops below `grad_norm_threshold`; for K > 1
outputs one critic is shared and the estimates are summed over outputs.

Everything is one jit-compiled `step(state, data) -> (state, info)`, so many fits (e.g. the
splits of a UCI dataset) run at once under `jax.vmap`.

  init, step = build_fit(prior, apply_fn, target_fn, measurement_fn)
  state = init(rng_key)
  for _ in range(200):
    state, info = step(state, data)        # info.wasserstein: the W1 estimate
  hyper = state.hyper
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdl import errors

PyTree = Any


# --- Measurement sets ------------------------------------------------------------------------

def measurement_set_mixed(rng_key, x_train, x_min, x_max, num_points: int,
                          real_ratio: float = 0.7):
  """UCI measurement set: `real_ratio` of random training inputs + the rest uniform in a box.

  Args:
    x_train: [n, d] (standardized) training inputs; x_min, x_max: [d] box corners.
  Returns:
    [num_points, d].
  """
  n_real = min(int(num_points * real_ratio), x_train.shape[0])
  n_rand = num_points - n_real
  k1, k2 = jax.random.split(rng_key)
  idx = jax.random.choice(k1, x_train.shape[0], (n_real,), replace=False)
  u = jax.random.uniform(k2, (n_rand, x_train.shape[1]), x_train.dtype)
  return jnp.concatenate([x_train[idx], x_min + u * (x_max - x_min)], axis=0)


def measurement_grid(x_min: float, x_max: float, num_points: int):
  """1D measurement set: a fixed grid, [num_points, 1]."""
  return jnp.linspace(x_min, x_max, num_points, dtype=jnp.float32)[:, None]


def measurement_batch(rng_key, x_train, num_points: int):
  """A random minibatch of training inputs (images or vectors): [num_points, ...]."""
  idx = jax.random.choice(rng_key, x_train.shape[0], (num_points,), replace=False)
  return x_train[idx]


# --- The critic ------------------------------------------------------------------------------

class Critic(nn.Module):
  """The Lipschitz function phi: function-value vectors [n, M] -> [n]."""
  hidden: int = 200

  @nn.compact
  def __call__(self, f):
    kinit = nn.initializers.xavier_normal()
    binit = nn.initializers.normal(1.0)
    f = nn.softplus(nn.Dense(self.hidden, kernel_init=kinit, bias_init=binit)(f))
    f = nn.softplus(nn.Dense(self.hidden, kernel_init=kinit, bias_init=binit)(f))
    return nn.Dense(1, kernel_init=kinit, bias_init=binit)(f)[:, 0]


def wasserstein_estimate(critic_fn, f_nn, f_gp):
  """Dual-form estimate sum_k mean phi(f_nn[..., k]) - mean phi(f_gp[..., k]).

  Args:
    critic_fn: [n, M] -> [n].
    f_nn, f_gp: [n, M, K] function values (K outputs).
  """
  per_out = jax.vmap(lambda a, b: jnp.mean(critic_fn(a)) - jnp.mean(critic_fn(b)),
                     in_axes=(2, 2))(f_nn, f_gp)
  return jnp.sum(per_out)


def gradient_penalty(critic_fn, rng_key, f_p, f_q, kind: str = "gp"):
  """Mean (||grad phi(x)|| - 1)^2 ("gp") or max(0, ||grad phi(x)|| - 1)^2 ("lp") at random
  interpolates x = e f_p + (1 - e) f_q, e ~ U(0, 1) per function, summed over outputs.

  Args:
    f_p, f_q: [n, M, K].
  """
  eps = jax.random.uniform(rng_key, (f_p.shape[0], 1, 1), f_p.dtype)
  x = eps * f_p + (1.0 - eps) * f_q
  # d phi(x_i) / d x_i for every row at once: phi acts row-wise, so grad of the sum works.
  grads = jax.vmap(lambda xk: jax.grad(lambda z: jnp.sum(critic_fn(z)))(xk),
                   in_axes=2, out_axes=2)(x)
  norms = jnp.sqrt(jnp.sum(jnp.square(grads), axis=1) + 1e-12)  # [n, K]
  excess = norms - 1.0
  if kind == "lp":
    excess = jnp.maximum(excess, 0.0)
  return jnp.sum(jnp.mean(jnp.square(excess), axis=0))


class CriticInfo(NamedTuple):
  wasserstein: jax.Array      # the estimate with the trained critic on its training draws
  num_steps: jax.Array        # critic steps actually taken (early stopping)
  grad_norm: jax.Array        # last gradient norm of the critic objective


def train_critic(rng_key, f_nn, f_gp, *, num_steps: int = 200, learning_rate: float = 0.02,
                 penalty_coeff: float = 10.0, penalty: str = "gp", hidden: int = 200,
                 grad_norm_threshold: float | None = None):
  """Trains a fresh critic to maximize the estimate minus the gradient penalty.

  Args:
    f_nn, f_gp: [n, M, K] draws (treated as constants).
  Returns:
    (critic_fn: [n, M] -> [n], CriticInfo).
  """
  critic = Critic(hidden)
  k_init, k_steps = jax.random.split(rng_key)
  f_nn = jax.lax.stop_gradient(f_nn)
  f_gp = jax.lax.stop_gradient(f_gp)
  params = critic.init(k_init, f_nn[:, :, 0])
  # torch.optim.Adagrad defaults (optbnn): no initial accumulator, eps 1e-10.
  opt = optax.adagrad(learning_rate, initial_accumulator_value=0.0, eps=1e-10)
  threshold = -1.0 if grad_norm_threshold is None else float(grad_norm_threshold)

  def objective(p, key):
    fn = lambda f: critic.apply(p, f)
    w = wasserstein_estimate(fn, f_nn, f_gp)
    return -w + penalty_coeff * gradient_penalty(fn, key, f_nn, f_gp, penalty), w

  def body(carry, key):
    p, opt_state, done, steps, last_norm = carry
    (_, w), g = jax.value_and_grad(objective, has_aux=True)(p, key)
    gnorm = optax.tree.norm(g)
    updates, new_opt_state = opt.update(g, opt_state, p)
    new_p = optax.apply_updates(p, updates)
    # Masked early stop: once the gradient norm is below the threshold, keep everything.
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(done, b, a), new, old)
    p, opt_state = keep(new_p, p), keep(new_opt_state, opt_state)
    steps = steps + jnp.where(done, 0, 1)
    last_norm = jnp.where(done, last_norm, gnorm)
    done = done | (gnorm < threshold)
    return (p, opt_state, done, steps, last_norm), w

  init = (params, opt.init(params), jnp.array(False), jnp.array(0, jnp.int32),
          jnp.array(0.0, jnp.float32))
  (params, _, _, steps, gnorm), ws = jax.lax.scan(body, init,
                                                   jax.random.split(k_steps, num_steps))
  fn = lambda f: critic.apply(params, f)
  return fn, CriticInfo(wasserstein_estimate(fn, f_nn, f_gp), steps, gnorm)


# --- The outer loop ----------------------------------------------------------------------------

class FitState(NamedTuple):
  hyper: PyTree
  opt_state: PyTree
  rng_key: jax.Array
  step: jax.Array


class FitInfo(NamedTuple):
  wasserstein: jax.Array      # W1 estimate with the fresh draws, before the prior update
  critic: CriticInfo


def _as_3d(f):
  return f[..., None] if f.ndim == 2 else f


def build_fit(prior, apply_fn: Callable, target_fn: Callable, measurement_fn: Callable, *,
              num_functions: int = 128, critic_steps: int = 200, critic_lr: float = 0.02,
              prior_lr: float = 0.05, penalty_coeff: float = 10.0, penalty: str = "gp",
              critic_hidden: int = 200, grad_norm_threshold: float | None = None,
              trainable: PyTree | None = None):
  """Builds `init(rng_key, hyper=None) -> FitState` and `step(state, data) -> (state, FitInfo)`.

  Args:
    prior: a `jaxdl.inference.priors` prior (its `init`, `sample_many`).
    apply_fn: `(params, x [M, ...]) -> [M, K]` (or [M]) network outputs.
    target_fn: `(rng_key, x, num, data) -> [num, M, K]` (or [num, M]) target draws, e.g. GP
      functions from `jaxdl.inference.gp.sample_prior_with_hyperpriors`.
    measurement_fn: `(rng_key, data) -> x [M, ...]`.
    num_functions: functions drawn from each side per step (the paper's minibatch size).
    critic_steps, critic_lr, penalty_coeff, penalty, critic_hidden, grad_norm_threshold: see
      `train_critic`.
    prior_lr: RMSprop learning rate for the prior hyperparameters.
    trainable: optional pytree of bools shaped like the hyperparameters; False leaves are
      kept at their initial values.
  `data` is any pytree the two functions need (e.g. a split's training inputs); it may carry
  a leading axis when `step` is vmapped.
  """
  if penalty not in ("gp", "lp"):
    raise errors.ConfigError(f"penalty={penalty!r} is not known; use 'gp' or 'lp'.")
  # torch.optim.RMSprop defaults (optbnn): alpha 0.99, eps 1e-8 outside the sqrt.
  opt = optax.rmsprop(prior_lr, decay=0.99, eps=1e-8, eps_in_sqrt=False)

  def nn_functions(key, hyper, x):
    params = prior.sample_many(key, hyper, num_functions)
    return _as_3d(jax.vmap(lambda p: apply_fn(p, x))(params))

  def init(rng_key, hyper=None):
    hyper = prior.init() if hyper is None else hyper
    return FitState(hyper, opt.init(hyper), rng_key, jnp.array(0, jnp.int32))

  def step(state, data=None):
    key, k_x, k_gp1, k_nn1, k_crit, k_gp2, k_nn2 = jax.random.split(state.rng_key, 7)
    x = measurement_fn(k_x, data)
    # Both sets of target draws in one call: GP targets factorize kernels with a batched
    # Cholesky, and two independent ones running concurrently can deadlock jaxlib's CPU
    # thread pool (see jaxdl.inference.gp._cholesky).
    del k_gp2
    f_gp_both = _as_3d(target_fn(k_gp1, x, 2 * num_functions, data))
    f_gp_critic, f_gp = f_gp_both[:num_functions], f_gp_both[num_functions:]
    critic_fn, cinfo = train_critic(
        k_crit, nn_functions(k_nn1, state.hyper, x), f_gp_critic,
        num_steps=critic_steps, learning_rate=critic_lr, penalty_coeff=penalty_coeff,
        penalty=penalty, hidden=critic_hidden, grad_norm_threshold=grad_norm_threshold)
    loss = lambda h: wasserstein_estimate(critic_fn, nn_functions(k_nn2, h, x), f_gp)
    w, grads = jax.value_and_grad(loss)(state.hyper)
    if trainable is not None:
      grads = jax.tree.map(lambda g, m: g * jnp.asarray(m, g.dtype), grads, trainable)
    updates, opt_state = opt.update(grads, state.opt_state, state.hyper)
    hyper = optax.apply_updates(state.hyper, updates)
    return FitState(hyper, opt_state, key, state.step + 1), FitInfo(w, cinfo)

  return init, step


def fit_prior(rng_key, prior, apply_fn, target_fn, measurement_fn, data=None, *,
              num_iters: int = 200, hyper=None, callback: Callable | None = None,
              chunk: int = 10, **kwargs):
  """Runs `num_iters` outer steps of `build_fit` (jit-compiled, `chunk` steps per call).

  Args:
    callback: called as `callback(iteration, FitInfo of the chunk)` after every chunk
      (progress bars, metric writers).
    **kwargs: forwarded to `build_fit`.
  Returns:
    (fitted hyperparameters, W1 estimates [num_iters] as numpy).
  """
  init, step = build_fit(prior, apply_fn, target_fn, measurement_fn, **kwargs)

  def run(length):
    return jax.jit(lambda s, d: jax.lax.scan(lambda c, _: step(c, d), s, None, length=length))

  run_chunk = run(chunk)
  state = init(rng_key, hyper)
  history = []
  done = 0
  while done < num_iters:
    # A shorter last chunk compiles once more; choose num_iters % chunk == 0 to avoid it.
    runner = run_chunk if num_iters - done >= chunk else run(num_iters - done)
    state, infos = runner(state, data)
    done += infos.wasserstein.shape[0]
    history.append(np.asarray(infos.wasserstein))
    if callback is not None:
      callback(done, infos)
  return state.hyper, np.concatenate(history)
