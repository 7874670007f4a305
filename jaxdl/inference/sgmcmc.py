"""Stochastic-gradient MCMC: SGLD, SGHMC and scale-adapted SGHMC, as pure JAX kernels.

* SGLD (Welling & Teh, ICML 2011, eq. 4), with temperature T:
    theta' = theta + eps / 2 * g(theta) + N(0, eps T).
* SGHMC (Chen, Fox, Guestrin, ICML 2014, eq. 15, with the gradient-noise estimate B = 0),
  in the (learning rate eta, friction alpha) form; the momentum v is kept in the state:
    v' = (1 - alpha) v + eta g(theta) + N(0, 2 alpha eta T),   theta' = theta + v'.
* Scale-adapted SGHMC (Springenberg, Klein, Falkner, Hutter, NeurIPS 2016, eq. 8-10; the
  sampler of the functional-prior paper, optbnn `samplers/adaptive_sghmc.py`): during the
  first `num_burnin_steps` steps it tracks a per-parameter running mean of the gradient
  and of its square (adaptive window tau), then preconditions with
  M^-1 = 1 / (sqrt(v_hat) + eps):
    v' = v - lr^2 M^-1 grad U - mdecay v + N(0, T (2 lr^2 mdecay M^-1 - lr^4)),
    theta' = theta + v'.

g is the gradient of the log posterior estimate (`jaxdl.inference.gradients`); U = -log
posterior. Temperature T scales the injected noise, so the chain targets p(theta | D)^(1/T);
T = 0 is noiseless optimization (the exploration stage of cyclical SG-MCMC). `step_size`
and `temperature` accept floats or schedules (`jaxdl.inference.schedules`).

Each algorithm has three layers (blackjax style): `init(position) -> State`,
`build_kernel(grad_fn, ...) -> kernel(rng_key, state, batch) -> (State, Info)`, and a
top-level function binding the hyperparameters into a `SamplingAlgorithm(init, step)`.
States are NamedTuples of pytrees, so kernels run under `jax.lax.scan`, `jax.vmap` (chains)
and `jax.jit`. `sample` drives burn-in + thinning with nested scans.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxdl import errors
from jaxdl.inference.schedules import as_schedule

PyTree = Any


class SamplingAlgorithm(NamedTuple):
  init: Callable
  step: Callable


class SGMCMCInfo(NamedTuple):
  step_size: jax.Array
  temperature: jax.Array


def _normal_like(rng_key, tree):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(rng_key, len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, l.shape, l.dtype)
                                      for k, l in zip(keys, leaves)])


def _check_positive(name, value):
  if not callable(value) and not value > 0:
    raise errors.ConfigError(f"{name}={value} must be positive.")


# --- SGLD ----------------------------------------------------------------------------------

class SGLDState(NamedTuple):
  position: PyTree
  step: jax.Array


def sgld_init(position) -> SGLDState:
  return SGLDState(position, jnp.zeros((), jnp.int32))


def sgld_build_kernel(grad_fn: Callable, step_size, temperature=1.0) -> Callable:
  """grad_fn: `(position, batch) -> gradient of the log posterior estimate`."""
  step_size, temperature = as_schedule(step_size), as_schedule(temperature)

  def kernel(rng_key, state: SGLDState, batch):
    eps, temp = step_size(state.step), temperature(state.step)
    grads = grad_fn(state.position, batch)
    noise = _normal_like(rng_key, state.position)
    position = jax.tree.map(lambda x, g, n: x + 0.5 * eps * g + jnp.sqrt(eps * temp) * n,
                            state.position, grads, noise)
    return SGLDState(position, state.step + 1), SGMCMCInfo(eps, temp)
  return kernel


def sgld(grad_fn: Callable, step_size, temperature=1.0) -> SamplingAlgorithm:
  _check_positive("step_size", step_size)
  return SamplingAlgorithm(sgld_init, sgld_build_kernel(grad_fn, step_size, temperature))


# --- SGHMC ---------------------------------------------------------------------------------

class SGHMCState(NamedTuple):
  position: PyTree
  momentum: PyTree
  step: jax.Array


def sghmc_init(position) -> SGHMCState:
  return SGHMCState(position, jax.tree.map(jnp.zeros_like, position),
                    jnp.zeros((), jnp.int32))


def sghmc_build_kernel(grad_fn: Callable, step_size, friction: float = 0.05,
                       temperature=1.0) -> Callable:
  """`step_size` is eta (a squared learning rate in Springenberg's notation)."""
  step_size, temperature = as_schedule(step_size), as_schedule(temperature)

  def kernel(rng_key, state: SGHMCState, batch):
    eta, temp = step_size(state.step), temperature(state.step)
    grads = grad_fn(state.position, batch)
    noise = _normal_like(rng_key, state.position)
    scale = jnp.sqrt(2.0 * friction * eta * temp)
    momentum = jax.tree.map(lambda v, g, n: (1.0 - friction) * v + eta * g + scale * n,
                            state.momentum, grads, noise)
    position = jax.tree.map(jnp.add, state.position, momentum)
    return SGHMCState(position, momentum, state.step + 1), SGMCMCInfo(eta, temp)
  return kernel


def sghmc(grad_fn: Callable, step_size, friction: float = 0.05,
          temperature=1.0) -> SamplingAlgorithm:
  _check_positive("step_size", step_size)
  if not 0 < friction <= 1:
    raise errors.ConfigError(f"friction={friction} must be in (0, 1].")
  return SamplingAlgorithm(sghmc_init,
                           sghmc_build_kernel(grad_fn, step_size, friction, temperature))


# --- Scale-adapted SGHMC (Springenberg et al. 2016) ---------------------------------------

class AdaptiveSGHMCState(NamedTuple):
  position: PyTree
  momentum: PyTree
  tau: PyTree        # adaptive averaging window
  g: PyTree          # running mean of the gradient of U
  v_hat: PyTree      # running mean of its square (the preconditioner's estimate)
  step: jax.Array


def adaptive_sghmc_init(position) -> AdaptiveSGHMCState:
  ones = lambda: jax.tree.map(jnp.ones_like, position)
  return AdaptiveSGHMCState(position, jax.tree.map(jnp.zeros_like, position), ones(), ones(),
                            ones(), jnp.zeros((), jnp.int32))


def adaptive_sghmc_build_kernel(grad_fn: Callable, step_size=1e-2, mdecay: float = 0.05,
                                num_burnin_steps: int = 3000, epsilon: float = 1e-10,
                                temperature=1.0) -> Callable:
  """`step_size` is the learning rate lr (optbnn's `lr`); adaptation runs while
  `state.step < num_burnin_steps`."""
  step_size, temperature = as_schedule(step_size), as_schedule(temperature)

  def kernel(rng_key, state: AdaptiveSGHMCState, batch):
    lr, temp = step_size(state.step), temperature(state.step)
    grad_u = jax.tree.map(jnp.negative, grad_fn(state.position, batch))
    adapt = state.step < num_burnin_steps

    def update_stats(tau, g, v_hat, gu):
      tau_inv = 1.0 / (tau + 1.0)
      new_tau = tau - tau * (g * g / (v_hat + epsilon)) + 1.0
      new_g = g - g * tau_inv + tau_inv * gu
      new_v = v_hat - v_hat * tau_inv + tau_inv * gu * gu
      return (jnp.where(adapt, new_tau, tau), jnp.where(adapt, new_g, g),
              jnp.where(adapt, new_v, v_hat))

    stats = jax.tree.map(update_stats, state.tau, state.g, state.v_hat, grad_u)
    treedef = jax.tree.structure(state.position)
    tau, g, v_hat = (jax.tree.unflatten(treedef, list(x))
                     for x in zip(*treedef.flatten_up_to(stats)))
    noise = _normal_like(rng_key, state.position)

    def update_momentum(v, gu, vh, n):
      minv = 1.0 / (jnp.sqrt(vh) + epsilon)
      var = jnp.maximum(2.0 * lr ** 2 * mdecay * minv - lr ** 4, 1e-16)
      return v - lr ** 2 * minv * gu - mdecay * v + jnp.sqrt(var * temp) * n

    momentum = jax.tree.map(update_momentum, state.momentum, grad_u, v_hat, noise)
    position = jax.tree.map(jnp.add, state.position, momentum)
    return (AdaptiveSGHMCState(position, momentum, tau, g, v_hat, state.step + 1),
            SGMCMCInfo(lr, temp))
  return kernel


def adaptive_sghmc(grad_fn: Callable, step_size=1e-2, mdecay: float = 0.05,
                   num_burnin_steps: int = 3000, epsilon: float = 1e-10,
                   temperature=1.0) -> SamplingAlgorithm:
  _check_positive("step_size", step_size)
  return SamplingAlgorithm(adaptive_sghmc_init, adaptive_sghmc_build_kernel(
      grad_fn, step_size, mdecay, num_burnin_steps, epsilon, temperature))


# --- Conditional (Gibbs) updates of auxiliary variables ------------------------------------

class WithAuxState(NamedTuple):
  state: Any      # the wrapped sampler's state
  aux: PyTree     # e.g. per-layer prior stds of a hierarchical prior


def with_gibbs(build_kernel: Callable[[PyTree], Callable], init_fn: Callable,
               gibbs_fn: Callable, every: int) -> SamplingAlgorithm:
  """Alternates a gradient sampler with exact conditional draws of auxiliary variables.

  Args:
    build_kernel: `aux -> kernel(rng_key, state, batch)`; the kernel's log density depends
      on aux (e.g. the current prior stds).
    init_fn: the wrapped sampler's `init(position)`.
    gibbs_fn: `(rng_key, position, aux) -> aux`, a draw from p(aux | position).
    every: redraw aux at steps 0, every, 2 every, ... (optbnn: every 20 steps).
  Returns:
    `init(position, aux)` and `step(rng_key, WithAuxState, batch)`.
  """
  def init(position, aux):
    return WithAuxState(init_fn(position), aux)

  def step(rng_key, state: WithAuxState, batch):
    k_gibbs, k_step = jax.random.split(rng_key)
    redraw = jnp.mod(state.state.step, every) == 0
    drawn = gibbs_fn(k_gibbs, state.state.position, state.aux)
    aux = jax.tree.map(lambda a, b: jnp.where(redraw, a, b), drawn, state.aux)
    new, info = build_kernel(aux)(k_step, state.state, batch)
    return WithAuxState(new, aux), info

  return SamplingAlgorithm(init, step)


# --- Driver --------------------------------------------------------------------------------

def _position_of(state):
  return state.state.position if isinstance(state, WithAuxState) else state.position


def sample(rng_key, step_fn: Callable, state, batch_fn: Callable, *, num_burnin_steps: int,
           num_samples: int, thinning: int, transform: Callable | None = None):
  """Burn-in, then `num_samples` kept states `thinning` steps apart, all inside `lax.scan`.

  Step t (counting from 1) is kept when t > num_burnin_steps and (t - num_burnin_steps) is
  a multiple of `thinning` (optbnn's schedule: samples at burn-in + k * thinning).

  Args:
    step_fn: `kernel(rng_key, state, batch) -> (state, info)`.
    state: the initial state (e.g. `algorithm.init(position)`).
    batch_fn: `(rng_key, step) -> batch`, e.g. a random minibatch of a device-resident
      dataset.
    transform: applied to each kept position before it is stored (e.g. predictions on a
      test set, to keep memory small); default: the position itself.
  Returns:
    (final state, stacked `transform(position)` with a leading axis num_samples).
  Vmap this function over rng keys and initial states to run many chains at once.
  """
  transform = transform or (lambda p: p)

  def one_step(state, key):
    k_batch, k_step = jax.random.split(key)
    batch = batch_fn(k_batch, _step_of(state))
    state, _ = step_fn(k_step, state, batch)
    return state, None

  def run(state, key, n):
    return jax.lax.scan(one_step, state, jax.random.split(key, n))[0] if n > 0 else state

  k_burn, k_samp = jax.random.split(rng_key)
  state = run(state, k_burn, num_burnin_steps)

  def keep(state, key):
    state = run(state, key, thinning)
    return state, transform(_position_of(state))

  return jax.lax.scan(keep, state, jax.random.split(k_samp, num_samples))


def _step_of(state):
  return state.state.step if isinstance(state, WithAuxState) else state.step
