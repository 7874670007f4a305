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
import numpy as np

from jaxdl import errors


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU x Phi(x), as PyTorch computes it: x * (1 + erf(x / sqrt(2))) / 2.

  `nn.gelu(x, approximate=False)` writes Phi with erfc, exact in the far negative tail where
  this form rounds 1 + erf to 0 (an absolute error < 1e-6 there). XLA:CPU evaluates erfc
  piecewise (selects between two approximations) and erf as one rational function: the
  rdnet_tiny training step is 1.19x faster with this form (BENCHMARKS.md "GELU on CPU").
  """
  return x * (0.5 + 0.5 * jax.lax.erf(x * np.asarray(np.sqrt(0.5), x.dtype)))


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "relu6": nn.relu6,
    "leaky_relu": nn.leaky_relu,
    "tanh": jnp.tanh,
    "gelu": gelu,
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
