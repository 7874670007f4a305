"""The prototype layer of part-prototype networks, over any backbone's feature map.

ProtoPNet ("This Looks Like That", Chen et al. 2019): prototypes p_j [P, D] (1x1 patches),
squared L2 distances to every position of the add-on feature map via
||z||^2 - 2 z.p + ||p||^2, global min pooling, similarity log((d + 1) / (d + 1e-4)), and a
last layer initialized to +1 for a prototype's own class and -0.5 for the others.
EvalProtoPNet (Huang et al. 2023) and ST-ProtoPNet (Wang et al. 2023) use cosine similarity
(z and p normalized) for the cluster/separation losses and the projection z.p/||p|| (global
max pooling) for the logits. All three go through `jaxdl.kernels.prototype_distance`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl import errors
from jaxdl.kernels.prototype_distance import prototype_distance_map, prototype_min_distance

METRICS = ("l2", "cosine", "projection")


def class_identity(num_prototypes: int, num_classes: int) -> jax.Array:
  """[P, C] one-hot class of each prototype: prototype j belongs to class j // (P / C)."""
  if num_prototypes % num_classes:
    raise errors.ConfigError(
        f"num_prototypes={num_prototypes} is not a multiple of num_classes={num_classes}; "
        "use prototypes_per_class * num_classes prototypes")
  per_class = num_prototypes // num_classes
  return jax.nn.one_hot(jnp.arange(num_prototypes) // per_class, num_classes)


def last_layer_init(incorrect_strength: float = -0.5):
  """Initializer of the [P, C] last layer: 1 for a prototype's class, `incorrect_strength`
  elsewhere (ProtoPNet `set_last_layer_incorrect_connection`)."""
  def init(key, shape, dtype=jnp.float32):
    del key
    ident = class_identity(*shape)
    return (ident + incorrect_strength * (1.0 - ident)).astype(dtype)
  return init


def log_similarity(distances, epsilon: float = 1e-4):
  """ProtoPNet's distance -> similarity: log((d + 1) / (d + epsilon))."""
  return jnp.log((distances + 1.0) / (distances + epsilon))


def l2_normalize(x, axis=-1, eps=1e-12):
  """x / max(||x||, eps), as torch.nn.functional.normalize."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axis, keepdims=True))
  return (x / jnp.maximum(norm, eps)).astype(x.dtype)


def _kernel_inputs(z, p, metric):
  """Maps a layer metric onto the kernel's ("l2" | "dot") on suitably normalized inputs."""
  if metric == "l2":
    return z, p, "l2"
  if metric == "cosine":
    return l2_normalize(z), l2_normalize(p), "dot"
  if metric == "projection":
    return z, l2_normalize(p), "dot"
  raise errors.unknown_name("prototype metric", metric, METRICS)


def min_distances(z, p, *, metric: str = "l2", impl: str = "auto", interpret: bool = False):
  """Global min over positions of the prototype distances.

  Args:
    z: [N, h, w, D] feature map.
    p: [P, D] prototypes.
    metric: "l2" (squared distance), "cosine" (distance = -cosine similarity) or
      "projection" (distance = -z.p/||p||).
  Returns:
    (min_distance [N, P], argmin [N, P] flat index into h * w).
  """
  n, h, w, d = z.shape
  zk, pk, kmetric = _kernel_inputs(z, p, metric)
  if impl == "mosaic_gpu":  # wgmma takes one 16-bit dtype: prototypes follow the features
    pk = pk.astype(zk.dtype)
  return prototype_min_distance(zk.reshape(n, h * w, d), pk, metric=kmetric, impl=impl,
                                interpret=interpret)


def distance_maps(z, p, *, metric: str = "l2"):
  """The full distance map [N, h, w, P] (push, activation maps, analysis)."""
  n, h, w, d = z.shape
  zk, pk, kmetric = _kernel_inputs(z, p, metric)
  return prototype_distance_map(zk.reshape(n, h * w, d), pk, metric=kmetric).reshape(
      n, h, w, -1)


class PrototypeLayer(nn.Module):
  """Holds the prototype vectors and computes their min distances to a feature map.

  Attributes:
    num_prototypes: P.
    prototype_dim: D, the channels of the feature map it is applied to.
    metric: "l2", "cosine" or "projection" (see `min_distances`).
    impl: kernel choice for `prototype_min_distance` ("auto", "pallas", "mosaic_gpu" for
      bf16 features on Hopper, "xla").
    interpret: run the Pallas kernel in interpret mode (CPU tests).
  """
  num_prototypes: int
  prototype_dim: int
  metric: str = "l2"
  impl: str = "auto"
  interpret: bool = False
  param_dtype: Any = jnp.float32

  def setup(self):
    # torch.rand: uniform in [0, 1), as in the reference implementations.
    self.prototype_vectors = self.param(
        "prototype_vectors", nn.initializers.uniform(1.0),
        (self.num_prototypes, self.prototype_dim), self.param_dtype)

  def _check(self, z):
    if z.ndim != 4 or z.shape[-1] != self.prototype_dim:
      raise errors.ShapeError(
          f"prototype layer expects a feature map [batch, h, w, {self.prototype_dim}], got "
          f"shape {z.shape}; set prototype_dim to the add-on layers' output channels")

  def __call__(self, z, metric: str | None = None):
    """(min_distance [N, P], argmin [N, P]) of feature map z [N, h, w, D]."""
    self._check(z)
    p = self.prototype_vectors.astype(z.dtype)
    return min_distances(z, p, metric=metric or self.metric, impl=self.impl,
                         interpret=self.interpret)

  def distance_map(self, z, metric: str | None = None):
    """[N, h, w, P] distances of every position to every prototype."""
    self._check(z)
    return distance_maps(z, self.prototype_vectors.astype(z.dtype),
                         metric=metric or self.metric)
