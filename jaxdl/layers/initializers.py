"""Weight initializers by name, with an optional scale factor.

"torch" reproduces PyTorch's default for nn.Linear / nn.Conv2d (kaiming_uniform with a=sqrt(5)):
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the kernel; the bias uses the same bound. Reference code
for the grokking and functional-prior papers is PyTorch, so its initialization is available.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax.linen import initializers as init

from jaxdl import errors


def _fan_in(shape) -> int:
  # Flax kernels are [..., in, out]: Dense [in, out], Conv [kh, kw, in, out].
  return int(math.prod(shape[:-1])) if len(shape) > 1 else int(shape[0])


def torch_uniform(scale: float = 1.0, fan_in: int | None = None):
  """U(-scale/sqrt(fan_in), scale/sqrt(fan_in)); fan_in from the shape unless given (biases)."""
  def _init(key, shape, dtype=jnp.float32):
    n = fan_in if fan_in is not None else _fan_in(shape)
    bound = scale / math.sqrt(n)
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return _init


def get_initializer(name: str, scale: float = 1.0):
  """A kernel initializer by name, its output multiplied by `scale`."""
  base = {
      "lecun_normal": init.lecun_normal(),
      "he_normal": init.he_normal(),
      "he_uniform": init.he_uniform(),
      "glorot_uniform": init.glorot_uniform(),
      "xavier_uniform": init.xavier_uniform(),
      "normal": init.normal(1.0),
      "torch": torch_uniform(1.0),
      "torch_kaiming_normal_fan_out": init.variance_scaling(2.0, "fan_out", "untruncated_normal"),
  }
  if name not in base:
    raise errors.unknown_name("initializer", name, base)
  f = base[name]
  if scale == 1.0:
    return f
  return lambda key, shape, dtype=jnp.float32: scale * f(key, shape, dtype)
