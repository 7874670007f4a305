"""Stochastic depth ("drop path", Huang et al. 2016, "Deep Networks with Stochastic Depth").

Each example's residual/new-feature branch is zeroed with probability `rate` and scaled by
1 / (1 - rate) otherwise (timm's `DropPath` with scale_by_keep=True), so that the expected
output equals the eval-mode output. Draws from the "dropout" rng stream.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class DropPath(nn.Module):
  """x: [batch, ...] -> x with whole examples dropped (training only).

  Attributes:
    rate: probability of dropping an example's branch, in [0, 1).
  """
  rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
