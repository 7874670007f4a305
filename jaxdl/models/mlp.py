"""Multi-layer perceptrons.

The workhorse of the Bayesian (functional priors: 1x100 tanh), grokking (MNIST: width 200,
depth 4, large initialization) and PFN-prior experiments. Inputs of any rank are flattened
to [batch, features]. Every hidden nonlinearity records its input under
`preactivations/act_<i>` (DESIGN.md, Pre-activations); with `sow_logits` the output layer's
values are recorded too (the grokking reference counts the logits as a layer).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdl.layers import Dense, activation, get_initializer
from jaxdl.layers.initializers import torch_uniform
from jaxdl.models.registry import register


class MLP(nn.Module):
  """Dense -> activation, repeated; then a Dense head with `num_classes` outputs.

  Attributes:
    num_classes: output dimension (classes, or 1 for scalar regression).
    features: hidden widths, one entry per hidden layer.
    activation: nonlinearity name (see `jaxdl.layers.get_activation`).
    weight_init: kernel initializer name; "torch" is PyTorch's nn.Linear default (its bias too).
    init_scale: factor multiplying the initial weights and biases (grokking's large init).
    use_bias: whether the dense layers have biases.
    sow_logits: also record the head's output in `preactivations/logits`.
  """
  num_classes: int = 10
  features: Sequence[int] = (200, 200)
  activation: str = "relu"
  weight_init: str = "lecun_normal"
  init_scale: float = 1.0
  use_bias: bool = True
  sow_logits: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def _dense(self, features, fan_in, name):
    if self.weight_init == "torch":
      kinit = torch_uniform(self.init_scale)
      binit = torch_uniform(self.init_scale, fan_in=fan_in)
    else:
      kinit = get_initializer(self.weight_init, self.init_scale)
      binit = nn.initializers.zeros
    return Dense(features, use_bias=self.use_bias, kernel_init=kinit, bias_init=binit,
                 dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No dropout or normalization.
    x = jnp.reshape(x, (x.shape[0], -1))
    for i, width in enumerate(self.features):
      x = self._dense(width, x.shape[-1], f"dense_{i}")(x)
      x = activation(self, x, f"act_{i}", self.activation)
    x = self._dense(self.num_classes, x.shape[-1], "head")(x)
    if self.sow_logits:
      self.sow("preactivations", "logits", x)
    return x.astype(jnp.float32)


register("mlp", MLP, family="mlp")
register("mlp_small", partial(MLP, features=(128,)), family="mlp")
register("mlp_4x200", partial(MLP, features=(200, 200, 200, 200)), family="mlp")
