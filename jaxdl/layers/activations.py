"""Activations that record their inputs for analysis code.

Every piecewise-linear model records the input of each ReLU-like nonlinearity with
`module.sow("preactivations", name, x)` (DESIGN.md, Pre-activations). Analysis code reads them
with `model.apply(variables, x, mutable=["preactivations"])` without knowing the
architecture; when the collection is not mutable, `sow` costs nothing.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl import errors

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "relu6": nn.relu6,
    "leaky_relu": nn.leaky_relu,
    "tanh": jnp.tanh,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "silu": nn.silu,
    "sigmoid": nn.sigmoid,
    "softplus": nn.softplus,
    "erf": jax.lax.erf,
    "identity": lambda x: x,
}
# Nonlinearities with kinks: their inputs are what local complexity counts.
PIECEWISE_LINEAR = ("relu", "relu6", "leaky_relu", "identity")


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in _ACTIVATIONS:
    raise errors.unknown_name("activation", name, _ACTIVATIONS)
  return _ACTIVATIONS[name]


def activation(module: nn.Module, x: jax.Array, name: str, kind: str = "relu") -> jax.Array:
  """Applies activation `kind`, sowing its input as `preactivations/<name>`."""
  module.sow("preactivations", name, x)
  return get_activation(kind)(x)


def sow_relu(module: nn.Module, x: jax.Array, name: str) -> jax.Array:
  """ReLU that records its input (the pre-activation) under `name`."""
  return activation(module, x, name, "relu")
