"""Loss registry. A loss maps (outputs, batch) to per-example losses and metrics.

  loss(outputs, batch) -> (per_example_loss [B], {metric_name: per_example_value [B]})

`batch["targets"]` is either integer labels [B] or soft targets [B, K] (label smoothing,
mixup and cutmix produce soft targets). The loop averages with the batch's padding mask.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxdl import errors

_LOSSES: dict[str, Callable] = {}


def register(name: str):
  def _register(fn):
    _LOSSES[name] = fn
    return fn
  return _register


def get(name: str) -> Callable:
  from jaxdl.train.trainers import discover
  discover()
  if name not in _LOSSES:
    raise errors.unknown_name("loss", name, _LOSSES)
  return _LOSSES[name]


def _soft(targets, num_classes):
  if targets.ndim == 1:
    return jax.nn.one_hot(targets, num_classes, dtype=jnp.float32)
  return targets.astype(jnp.float32)


def _accuracy(logits, targets):
  labels = targets if targets.ndim == 1 else jnp.argmax(targets, -1)
  return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


@register("cross_entropy")
def cross_entropy(outputs, batch):
  """Softmax cross-entropy with integer or soft targets; also reports accuracy."""
  logits = outputs.astype(jnp.float32)
  targets = batch["targets"]
  loss = optax.softmax_cross_entropy(logits, _soft(targets, logits.shape[-1]))
  return loss, {"accuracy": _accuracy(logits, targets)}


@register("mse")
def mse(outputs, batch):
  """Mean squared error to one-hot (or soft) targets, averaged over classes (PyTorch's
  nn.MSELoss on one-hot labels, as in the grokking experiments); also reports accuracy."""
  out = outputs.astype(jnp.float32)
  loss = jnp.mean((out - _soft(batch["targets"], out.shape[-1])) ** 2, -1)
  return loss, {"accuracy": _accuracy(out, batch["targets"])}


@register("regression_mse")
def regression_mse(outputs, batch):
  """Squared error of a scalar (or vector) regression output; reports RMSE-able MSE."""
  out = outputs.astype(jnp.float32).reshape(outputs.shape[0], -1)
  y = batch["targets"].astype(jnp.float32).reshape(out.shape[0], -1)
  se = jnp.mean((out - y) ** 2, -1)
  return se, {"squared_error": se}
