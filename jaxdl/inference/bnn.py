"""A Bayesian neural network: any Flax model + a weight prior + a likelihood.

The log densities are written here once and shared by SG-MCMC (`jaxdl.inference.sgmcmc`),
NUTS/HMC (`jaxdl.inference.hmc`, through a NumPyro model) and evaluation.

Positions (what samplers move) are parameter pytrees. With `standardized=True` they are in
the prior's standardized coordinates z = w / scale, where scale = 1/sqrt(fan_in) for
weights (`jaxdl.inference.priors`): the network uses w = z * scale. This is how optbnn
parametrizes its networks (`Linear` divides W by sqrt(n_in) in the forward pass), and it
matters for samplers that are not invariant to reparametrization (scale-adapted SGHMC):
with it, every coordinate has prior std sigma and the UCI settings of the paper transfer.

  bnn = BNN(apply_fn, prior, hyper, likelihood="gaussian", noise_variance=0.1)
  grad_fn = gradients.grad_estimator(bnn.log_prior, bnn.log_likelihood, n_train, clip_norm=100)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxdl import errors

PyTree = Any
_LIKELIHOODS = ("gaussian", "categorical")


@dataclasses.dataclass(frozen=True, eq=False)
class BNN:
  """Log densities of a Bayesian neural network.

  Attributes:
    apply_fn: `(params, x) -> outputs [B, K]` (e.g. `lambda p, x: model.apply({"params": p},
      x)`).
    prior: a prior from `jaxdl.inference.priors`.
    hyper: the prior's hyperparameters (`prior.init()` or fitted ones).
    likelihood: "gaussian" (regression; outputs [B, 1] or [B]) or "categorical" (logits).
    noise_variance: Gaussian observation noise (on the targets' scale used for training).
    standardized: positions are z = w / scale (see the module docstring).
  """
  apply_fn: Callable
  prior: Any
  hyper: PyTree
  likelihood: str = "gaussian"
  noise_variance: float = 0.1
  standardized: bool = True

  def __post_init__(self):
    if self.likelihood not in _LIKELIHOODS:
      raise errors.ConfigError(f"likelihood={self.likelihood!r} is not known; use one of "
                               f"{', '.join(_LIKELIHOODS)}.")
    if self.likelihood == "gaussian" and not self.noise_variance > 0:
      raise errors.ConfigError(f"noise_variance={self.noise_variance} must be positive.")

  # Coordinates.
  def to_params(self, position):
    if not self.standardized:
      return position
    return jax.tree.map(lambda z, c: z * c, position, self.prior.scale)

  def from_params(self, params):
    if not self.standardized:
      return params
    return jax.tree.map(lambda w, c: w / c, params, self.prior.scale)

  def init_position(self, rng_key, std: float = 1.0):
    """optbnn's chain initialization: weights N(0, std^2) in standardized units
    (N(0, std^2 / fan_in) as parameters), biases zero."""
    shapes = self.prior.layout.shapes
    keys = jax.random.split(rng_key, len(shapes))
    leaves = [std * jax.random.normal(k, s, jnp.float32) if len(s) >= 2
              else jnp.zeros(s, jnp.float32) for k, s in zip(keys, shapes)]
    params_std = self.prior.layout.unflatten(leaves)  # standardized draw
    return params_std if self.standardized else self.to_params(params_std)

  # Densities.
  def predict(self, position, x):
    """Network outputs for inputs x: [B, K]."""
    return self.apply_fn(self.to_params(position), x)

  def log_prior(self, position, std=None):
    """log p(position): the prior's (marginal) log density, or, given per-leaf `std` (e.g.
    from a hierarchical prior's Gibbs step), the conditional Gaussian. In standardized
    coordinates the constant Jacobian of w = z * scale is included."""
    params = self.to_params(position)
    if std is None:
      lp = self.prior.log_prob(self.hyper, params)
    else:
      lp = self.prior.conditional_log_prob(std, params)
    if self.standardized:
      lp = lp + sum(jnp.log(c) * l.size for c, l in zip(self.prior.layout.scales,
                                                         jax.tree.leaves(position)))
    return lp

  def log_likelihood(self, position, batch):
    """Per-example log p(y | x, position): [B]."""
    out = self.predict(position, batch["inputs"])
    return log_likelihood(out, batch["targets"], self.likelihood, self.noise_variance)

  def logdensity(self, position, batch, data_size: int | None = None):
    """log prior + (data_size / B) * sum of the batch's log likelihoods (full data when
    data_size is None)."""
    ll = self.log_likelihood(position, batch)
    scale = 1.0 if data_size is None else data_size / ll.shape[0]
    return self.log_prior(position) + scale * jnp.sum(ll)


def log_likelihood(outputs, targets, kind: str = "gaussian", noise_variance: float = 0.1):
  """Per-example log likelihood: [B].

  Args:
    outputs: [B, 1] or [B] (gaussian) or [B, C] logits (categorical).
    targets: [B] floats (gaussian) or integer labels (categorical).
  """
  if kind == "gaussian":
    f = outputs.reshape(outputs.shape[0], -1)[:, 0]
    return (-0.5 * jnp.square(targets - f) / noise_variance
            - 0.5 * jnp.log(2 * jnp.pi * noise_variance))
  if kind == "categorical":
    logp = jax.nn.log_softmax(outputs, axis=-1)
    return jnp.take_along_axis(logp, targets.astype(jnp.int32)[:, None], axis=-1)[:, 0]
  raise errors.ConfigError(f"likelihood={kind!r} is not known; use one of "
                           f"{', '.join(_LIKELIHOODS)}.")
