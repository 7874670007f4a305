"""Stochastic-gradient estimators of a log posterior, single-device or data-parallel.

For a model with prior p(theta) and likelihood p(y | x, theta) on N data points, the
minibatch estimate of the log posterior (Welling & Teh 2011, eq. 3) is

  log p(theta) + N / B * sum_{i in batch} log p(y_i | x_i, theta),

and SG-MCMC samplers follow its gradient. `clip_norm` reproduces optbnn's practice: it
clips the gradient of the per-datum loss -(estimate) / N to that norm before scaling back
by N (torch `clip_grad_norm_(..., 100)` on `NLL_batch / B - log prior / N`).

Data parallelism: `data_parallel_grad_estimator` evaluates the likelihood term on each
device's shard of the batch inside `jax.shard_map` and sums the gradients with `psum` over
the mesh axis "data" (the google-research bnn_hmc recipe). A plain `jax.jit` with the batch
placed by `shard_batch` does the same through XLA's SPMD partitioner; both give the
single-device result.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PyTree = Any


def minibatch_logdensity(log_prior_fn: Callable, log_likelihood_fn: Callable,
                         data_size: int) -> Callable:
  """`(position, batch) -> log p(position) + N * mean_batch log p(y | x, position)`.

  Args:
    log_prior_fn: `position -> scalar`.
    log_likelihood_fn: `(position, batch) -> [B]` per-example log likelihoods.
    data_size: N, the number of training points.
  """
  def fn(position, batch):
    return log_prior_fn(position) + data_size * jnp.mean(log_likelihood_fn(position, batch))
  return fn


def _clip(grads, data_size, clip_norm):
  if clip_norm is None:
    return grads
  # Clip the per-datum gradient (the loss optbnn differentiates), then scale back.
  per_datum = jax.tree.map(lambda g: g / data_size, grads)
  norm = optax.tree.norm(per_datum)
  factor = jnp.minimum(1.0, clip_norm / (norm + 1e-6))
  return jax.tree.map(lambda g: g * factor, grads)


def grad_estimator(log_prior_fn: Callable, log_likelihood_fn: Callable, data_size: int, *,
                   clip_norm: float | None = None) -> Callable:
  """`(position, batch) -> gradient of the minibatch log-posterior estimate` (a pytree)."""
  logdensity = minibatch_logdensity(log_prior_fn, log_likelihood_fn, data_size)

  def grad_fn(position, batch):
    return _clip(jax.grad(logdensity)(position, batch), data_size, clip_norm)
  return grad_fn


def shard_batch(batch, mesh: Mesh, axis: str = "data"):
  """Places every array of `batch` split along its first axis over the mesh axis `axis`."""
  sharding = NamedSharding(mesh, P(axis))
  return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)


def data_parallel_grad_estimator(log_prior_fn: Callable, log_likelihood_fn: Callable,
                                 data_size: int, mesh: Mesh, *, axis: str = "data",
                                 clip_norm: float | None = None) -> Callable:
  """Like `grad_estimator`, with the batch split over the devices of `mesh` along `axis`.

  Each device differentiates the sum of its shard's log likelihoods; the sums are added with
  `psum` and divided by the global batch size; the prior gradient is computed once on the
  replicated position. The global batch size must be divisible by the axis size.
  """
  def local_sum_grad(position, batch):
    ll = lambda p: jnp.sum(log_likelihood_fn(p, batch))
    g = jax.grad(ll)(position)
    count = jnp.asarray(jax.tree.leaves(batch)[0].shape[0], jnp.float32)
    return jax.lax.psum(g, axis), jax.lax.psum(count, axis)

  sharded = jax.shard_map(local_sum_grad, mesh=mesh, in_specs=(P(), P(axis)),
                          out_specs=(P(), P()), check_vma=False)

  def grad_fn(position, batch):
    g_lik, count = sharded(position, batch)
    g_prior = jax.grad(log_prior_fn)(position)
    grads = jax.tree.map(lambda a, b: a + data_size / count * b, g_prior, g_lik)
    return _clip(grads, data_size, clip_norm)
  return grad_fn
