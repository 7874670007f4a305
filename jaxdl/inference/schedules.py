"""Step-size and temperature schedules for SG-MCMC.

A schedule is a pure function `schedule(step: int array) -> float array`, usable inside
`jit`/`scan` (no Python control flow on the step). Samplers accept a float or a schedule
for `step_size` and `temperature`.

Cyclical SG-MCMC (Zhang, Li, Zhang, Chen, Wilson, "Cyclical Stochastic Gradient MCMC for
Bayesian Deep Learning", ICLR 2020, eq. 1): with K total steps and M cycles,

  alpha_k = alpha_0 / 2 * [cos(pi * mod(k - 1, ceil(K / M)) / ceil(K / M)) + 1]

and each cycle starts with an exploration stage (the first fraction `beta` of the cycle:
optimization, i.e. no injected noise) followed by a sampling stage, where samples are
collected. Here k counts from 0, so `mod(k, ceil(K / M))` plays the role of mod(k - 1, .).
"""

from __future__ import annotations

import math

import jax.numpy as jnp


def constant(value: float):
  return lambda step: jnp.asarray(value, jnp.float32)


def polynomial_decay(init_value: float, gamma: float = 0.55, a: float = 1.0, b: float = 1.0):
  """Welling & Teh (2011): init_value * (b / (b + step / a))^gamma (decays to zero)."""
  return lambda step: init_value * (b / (b + jnp.asarray(step, jnp.float32) / a)) ** gamma


def _period(num_steps: int, num_cycles: int) -> int:
  return math.ceil(num_steps / num_cycles)


def _cycle_position(step, num_steps: int, num_cycles: int):
  period = _period(num_steps, num_cycles)
  return jnp.mod(jnp.asarray(step, jnp.int32), period).astype(jnp.float32) / period


def _in_exploration(step, num_steps, num_cycles, exploration):
  # Integer comparison: the first round(exploration * period) steps of each cycle.
  period = _period(num_steps, num_cycles)
  return jnp.mod(jnp.asarray(step, jnp.int32), period) < int(round(exploration * period))


def cyclical_cosine(init_value: float, num_steps: int, num_cycles: int):
  """cSG-MCMC step size (Zhang et al. 2020, eq. 1)."""
  def schedule(step):
    return 0.5 * init_value * (jnp.cos(jnp.pi * _cycle_position(step, num_steps,
                                                                num_cycles)) + 1.0)
  return schedule


def cyclical_temperature(temperature: float, num_steps: int, num_cycles: int,
                         exploration: float = 0.25):
  """Temperature 0 (no injected noise: plain optimization) during the first `exploration`
  fraction of every cycle, `temperature` during its sampling stage."""
  def schedule(step):
    explore = _in_exploration(step, num_steps, num_cycles, exploration)
    return jnp.where(explore, 0.0, temperature).astype(jnp.float32)
  return schedule


def is_sampling_stage(step, num_steps: int, num_cycles: int, exploration: float = 0.25):
  """True during the sampling stage of a cycle (where cSG-MCMC collects samples)."""
  return ~_in_exploration(step, num_steps, num_cycles, exploration)


def as_schedule(value):
  """A float becomes a constant schedule; a callable is returned as it is."""
  return value if callable(value) else constant(value)
