"""Part-prototype networks: ProtoPNet, ST-ProtoPNet and EvalProtoPNet (SDFA + SA).

- ProtoPNet ("This Looks Like That", Chen et al., NeurIPS 2019; cfchen-duke/ProtoPNet):
  backbone feature map -> add-on layers (conv1x1-ReLU-conv1x1-Sigmoid) -> squared L2
  distances to P prototypes (10 per class) -> global min -> log((d+1)/(d+1e-4)) -> last
  layer (+1 own class, -0.5 others). Losses: cross-entropy, cluster (0.8), separation
  (-0.08), L1 on the wrong-class last-layer weights (1e-4).
- ST-ProtoPNet ("Learning Support and Trivial Prototypes", Wang et al., ICCV 2023;
  cwangrun/ST-ProtoPNet): two branches (trivial and support) with their own add-on layers
  (conv-Tanh-conv-Tanh), prototypes and last layer; cosine similarities for the cluster and
  separation terms, projections for the logits; closeness (support) and discrimination
  (trivial) losses, trained on alternating batches.
- EvalProtoPNet ("Evaluation and Improvement of Interpretability for Self-Explainable
  Part-Prototype Networks", Huang et al., ICCV 2023; hqhQAQ/EvalProtoPNet `model.py`):
  add-on conv1x1-Sigmoid, cosine distances for cluster/separation, projections
  z.p/||p|| max-pooled into the score aggregation (SA) module
  logits_c = sum_{j in c} softmax_c(w)_j * ppc * s_j, the shallow-deep feature alignment
  (SDFA) loss and the orthogonality loss.

Any registered image classifier with `features_only` is a backbone. SDFA's shallow features
(ResNet layer1 in the paper) are the output of the backbone submodule named by
`shallow_layer` (a path such as "layer1_2", read with `nn.intercept_methods`, so backbones
need no change), passed through a ReLU (a no-op on post-ReLU outputs) and space-to-depth to
the deep grid.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl import errors
from jaxdl.layers.conv import Conv
from jaxdl.layers.prototype import (PrototypeLayer, class_identity, l2_normalize,
                                    last_layer_init, log_similarity)
from jaxdl.models.registry import create, register

VARIANTS = ("protopnet", "evalprotopnet", "stprotopnet")
ADD_ONS = ("regular", "bottleneck", "sigmoid", "tanh")

# PyTorch's kaiming_normal_(mode="fan_out", nonlinearity="relu") on the add-on convolutions.
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class AddOnLayers(nn.Module):
  """1x1 convolutions mapping backbone channels to the prototype dimension.

  kind: "regular" conv-ReLU-conv-Sigmoid (ProtoPNet), "bottleneck" (halving the channels down
  to the prototype dim, ProtoPNet), "sigmoid" conv-Sigmoid (EvalProtoPNet), "tanh"
  conv-Tanh-conv-Tanh (ST-ProtoPNet). Names follow the torch nn.Sequential indices.
  """
  out_channels: int
  kind: str = "regular"
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = partial(Conv, kernel_size=(1, 1), kernel_init=_KAIMING_FAN_OUT,
                   dtype=self.dtype, param_dtype=self.param_dtype)
    d = self.out_channels
    if self.kind == "regular":
      x = nn.relu(conv(d, name="add_on_layers_0")(x))
      return nn.sigmoid(conv(d, name="add_on_layers_2")(x))
    if self.kind == "sigmoid":
      return nn.sigmoid(conv(d, name="add_on_layers_0")(x))
    if self.kind == "tanh":
      x = jnp.tanh(conv(d, name="add_on_layers_0")(x))
      return jnp.tanh(conv(d, name="add_on_layers_2")(x))
    if self.kind == "bottleneck":
      c, i = x.shape[-1], 0
      while c > d or i == 0:
        out = max(d, c // 2)
        x = nn.relu(conv(out, name=f"add_on_layers_{i}")(x))
        x = conv(out, name=f"add_on_layers_{i + 2}")(x)
        x = nn.relu(x) if out > d else nn.sigmoid(x)
        c, i = c // 2, i + 4
      return x
    raise errors.unknown_name("add-on layer type", self.kind, ADD_ONS)


def space_to_depth(x, grid: tuple[int, int]):
  """[N, H, W, C] -> [N, h, w, (H/h)(W/w)C]: each deep-grid cell gets its block of pixels."""
  n, hs, ws, c = x.shape
  h, w = grid
  if hs % h or ws % w:
    raise errors.ShapeError(
        f"shallow feature map {hs}x{ws} is not a multiple of the deep grid {h}x{w}; choose "
        "a shallow_layer whose resolution is an integer multiple of the last feature map")
  rh, rw = hs // h, ws // w
  x = x.reshape(n, h, rh, w, rw, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h, w, rh * rw * c)


class PartPrototypeNet(nn.Module):
  """ProtoPNet / EvalProtoPNet / ST-ProtoPNet on a registered backbone.

  Attributes:
    num_classes: C.
    variant: "protopnet", "evalprotopnet" or "stprotopnet".
    backbone: registered model name, created with `features_only=True`.
    backbone_kwargs: extra options of the backbone (e.g. {"features": (32, 64)}).
    prototypes_per_class: P / C (10 in ProtoPNet and EvalProtoPNet, 5 in ST-ProtoPNet).
    prototype_dim: D (128 ProtoPNet, 64 EvalProtoPNet and ST-ProtoPNet).
    add_on: add-on layer type (None: the variant's default).
    incorrect_strength: initial last-layer weight of the other classes' prototypes.
    shallow_layer: path of the backbone submodule whose output is SDFA's shallow feature
      map (EvalProtoPNet; e.g. "layer1_2" for resnet34). None: no shallow features.
    impl, interpret: prototype kernel choice (see `jaxdl.kernels.prototype_distance`).

  `__call__(x, train)` returns logits [N, C]; with `with_aux=True` it returns
  (logits, aux) where aux holds what the losses need (see `_aux`).
  """
  num_classes: int = 200
  variant: str = "protopnet"
  backbone: str = "resnet34"
  backbone_kwargs: Mapping[str, Any] | None = None
  prototypes_per_class: int = 10
  prototype_dim: int = 128
  add_on: str | None = None
  incorrect_strength: float = -0.5
  epsilon: float = 1e-4
  shallow_layer: str | None = None
  impl: str = "auto"
  interpret: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @property
  def num_prototypes(self) -> int:
    return self.num_classes * self.prototypes_per_class

  @property
  def branches(self) -> tuple[str, ...]:
    return ("trivial", "support") if self.variant == "stprotopnet" else ("",)

  def setup(self):
    if self.variant not in VARIANTS:
      raise errors.unknown_name("prototype network variant", self.variant, VARIANTS)
    # The backbone computes in the network's dtype (mixed precision) unless told otherwise.
    self.features = create(self.backbone, features_only=True,
                           **{"dtype": self.dtype, "param_dtype": self.param_dtype,
                              **dict(self.backbone_kwargs or {})})
    default_add_on = {"protopnet": "regular", "evalprotopnet": "sigmoid",
                      "stprotopnet": "tanh"}[self.variant]
    kind = self.add_on or default_add_on
    layer = partial(PrototypeLayer, num_prototypes=self.num_prototypes,
                    prototype_dim=self.prototype_dim, impl=self.impl,
                    interpret=self.interpret, param_dtype=self.param_dtype)
    add_on = partial(AddOnLayers, self.prototype_dim, kind, dtype=self.dtype,
                     param_dtype=self.param_dtype)
    dense = partial(nn.Dense, self.num_classes, use_bias=False, dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    kernel_init=last_layer_init(self.incorrect_strength))
    if self.variant == "stprotopnet":
      self.add_on_layers_trivial = add_on()
      self.add_on_layers_support = add_on()
      self.prototypes_trivial = layer(metric="cosine")
      self.prototypes_support = layer(metric="cosine")
      self.last_layer_trivial = dense()
      self.last_layer_support = dense()
    else:
      self.add_on_layers = add_on()
      self.prototypes = layer(metric="l2" if self.variant == "protopnet" else "cosine")
      if self.variant == "protopnet":
        self.last_layer = dense()
      else:  # SA module: per-prototype weights, softmax within each class.
        self.activation_weight = self.param("activation_weight", nn.initializers.ones,
                                            (self.num_prototypes,), self.param_dtype)

  # -- pieces

  def _backbone(self, x, train):
    """Deep feature map, and the shallow one when `shallow_layer` is set."""
    if not self.shallow_layer:
      return self.features(x, train=train), None
    captured = {}
    target = tuple(self.shallow_layer.split("/"))

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and tuple(context.module.path[1:]) == target:
        captured["shallow"] = out
      return out

    with nn.intercept_methods(interceptor):
      deep = self.features(x, train=train)
    if "shallow" not in captured:
      raise errors.ConfigError(
          f"shallow_layer {self.shallow_layer!r} is not a submodule of backbone "
          f"{self.backbone!r}; give the path of one of its layers (e.g. 'layer1_2')")
    return deep, nn.relu(captured["shallow"])

  def _branch(self, name):
    if name == "":
      return self.add_on_layers, self.prototypes
    return (getattr(self, f"add_on_layers_{name}"), getattr(self, f"prototypes_{name}"))

  def sa_logits(self, activations):
    """Score aggregation: [N, P] prototype activations -> [N, C] logits."""
    w = self.activation_weight.reshape(self.num_classes, self.prototypes_per_class)
    w = jax.nn.softmax(w, axis=-1) * self.prototypes_per_class
    s = activations.reshape(-1, self.num_classes, self.prototypes_per_class)
    return jnp.sum(s * w.astype(s.dtype), axis=-1)

  # -- forward

  def __call__(self, x, train: bool = False, with_aux: bool = False):
    deep, shallow = self._backbone(x, train)
    aux = {}
    if self.variant == "protopnet":
      z = self.add_on_layers(deep)
      dist, argmin = self.prototypes(z)
      logits = self.last_layer(log_similarity(dist, self.epsilon))
      aux.update(min_distances=dist, argmin=argmin)
    elif self.variant == "evalprotopnet":
      z = self.add_on_layers(deep)
      cos_dist, _ = self.prototypes(z, metric="cosine")
      neg_proj, argmax = self.prototypes(z, metric="projection")
      logits = self.sa_logits(-neg_proj)
      aux.update(min_distances=cos_dist, activations=-neg_proj, argmax=argmax, deep=deep)
      if shallow is not None:
        aux["shallow"] = space_to_depth(jax.lax.stop_gradient(shallow), deep.shape[1:3])
    else:
      logits = 0.0
      for name in self.branches:
        add_on, protos = self._branch(name)
        z = add_on(deep)
        cos_dist, _ = protos(z, metric="cosine")
        neg_proj, argmax = protos(z, metric="projection")
        branch_logits = getattr(self, f"last_layer_{name}")(-neg_proj)
        aux[name] = dict(logits=branch_logits.astype(jnp.float32),
                         similarities=-cos_dist, argmax=argmax)
        logits = logits + branch_logits
    logits = logits.astype(jnp.float32)
    return (logits, aux) if with_aux else logits

  def activation_maps(self, x, branch: str = "support"):
    """[N, h, w, P] prototype activation maps: log-similarity (ProtoPNet) or projection."""
    deep, _ = self._backbone(x, False)
    add_on, protos = self._branch("" if self.variant != "stprotopnet" else branch)
    z = add_on(deep)
    if self.variant == "protopnet":
      return log_similarity(protos.distance_map(z), self.epsilon)
    return -protos.distance_map(z, metric="projection")

  def push_forward(self, x, branch: str = "support"):
    """What the push needs: (features a prototype can be set to [N, h, w, D],
    min distance [N, P], argmin [N, P]).

    ProtoPNet pushes onto add-on features with L2 distances; ST-ProtoPNet (and the push of
    EvalProtoPNet) onto L2-normalized features with projection distances.
    """
    deep, _ = self._backbone(x, False)
    add_on, protos = self._branch("" if self.variant != "stprotopnet" else branch)
    z = add_on(deep)
    if self.variant == "protopnet":
      dist, argmin = protos(z)
      return z, dist, argmin
    dist, argmin = protos(z, metric="projection")
    return l2_normalize(z), dist, argmin


register("protopnet", PartPrototypeNet, family="protopnet")
register("evalprotopnet", partial(PartPrototypeNet, variant="evalprotopnet", prototype_dim=64),
         family="protopnet")
register("stprotopnet", partial(PartPrototypeNet, variant="stprotopnet", prototype_dim=64,
                                prototypes_per_class=5), family="protopnet")


# ============================================================================ losses
# Pure functions of the model outputs; coefficients live in the configs.


def cluster_separation(min_distances, targets, identity, max_dist: float):
  """ProtoPNet's cluster and separation costs (per example, [N] each).

  cluster = min distance to a prototype of the true class,
  separation = min distance to a prototype of another class; written as
  max_dist - max((max_dist - d) * mask) as in the reference, so that masked entries
  (0 after the product) never win.
  """
  correct = identity.T[targets]  # [N, P]
  inv = max_dist - min_distances
  cluster = max_dist - jnp.max(inv * correct, axis=1)
  separation = max_dist - jnp.max(inv * (1.0 - correct), axis=1)
  return cluster, separation


def max_similarity_terms(similarities, targets, identity):
  """ST-ProtoPNet's cluster / separation terms on max cosine similarities ([N] each)."""
  correct = identity.T[targets]
  return (jnp.max(similarities * correct, axis=1),
          jnp.max(similarities * (1.0 - correct), axis=1))


def l1_wrong_class(last_layer_kernel, identity):
  """L1 norm of the last-layer weights [P, C] connecting prototypes to other classes."""
  return jnp.sum(jnp.abs(last_layer_kernel * (1.0 - identity)))


def orthogonality(prototypes, num_classes: int):
  """sum_c ||P_c P_c^T - I||_1 (entrywise) over each class's prototypes P_c [ppc, D]."""
  p = prototypes.reshape(num_classes, -1, prototypes.shape[-1])
  gram = jnp.einsum("cid,cjd->cij", p, p)
  return jnp.sum(jnp.abs(gram - jnp.eye(p.shape[1])))


def closeness(support_prototypes, num_classes: int):
  """ST-ProtoPNet: -mean over class pairs c != c' of min_{i,j} p_ci . p_c'j (support)."""
  p = support_prototypes.reshape(num_classes, -1, support_prototypes.shape[-1])
  sim = jnp.einsum("aid,bjd->abij", p, p).reshape(num_classes, num_classes, -1)
  off = 1.0 - jnp.eye(num_classes)
  return jnp.sum(-jnp.min(sim, axis=-1) * off) / jnp.sum(off)


def discrimination(trivial_prototypes, num_classes: int):
  """ST-ProtoPNet: mean over class pairs c != c' of max_{i,j} p_ci . p_c'j (trivial)."""
  p = trivial_prototypes.reshape(num_classes, -1, trivial_prototypes.shape[-1])
  sim = jnp.einsum("aid,bjd->abij", p, p).reshape(num_classes, num_classes, -1)
  off = 1.0 - jnp.eye(num_classes)
  return jnp.sum(jnp.max(sim, axis=-1) * off) / jnp.sum(off)


def _cosine_self_similarity(x):
  """[N, h, w, C] -> [N, hw, hw] cosine similarities between positions."""
  n, h, w, c = x.shape
  x = x.reshape(n, h * w, c).astype(jnp.float32)
  x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # as the reference: no epsilon
  return jnp.einsum("nid,njd->nij", x, x)


def sdfa_loss(argmax, shallow, deep, targets, prototypes_per_class: int,
              threshold: float = 0.1):
  """EvalProtoPNet's shallow-deep feature alignment loss (`get_SDFA_loss`).

  Args:
    argmax: [N, P] position (flat index into h*w) of each prototype's max activation.
    shallow: [N, h, w, Cs] shallow features on the deep grid (space-to-depth, detached).
    deep: [N, h, w, C] deep (backbone) features.
    targets: [N] labels; only the ground-truth class's prototypes count.
  Returns:
    mean over images, the class's prototypes and positions of
    relu(|S_deep[a] - S_shallow[a]| - threshold), S the cosine self-similarity rows.
  """
  idx = targets[:, None] * prototypes_per_class + jnp.arange(prototypes_per_class)
  pos = jnp.take_along_axis(argmax, idx, axis=1)  # [N, ppc]
  s_sim = jnp.take_along_axis(_cosine_self_similarity(shallow), pos[..., None], axis=1)
  d_sim = jnp.take_along_axis(_cosine_self_similarity(deep), pos[..., None], axis=1)
  return jnp.mean(jax.nn.relu(jnp.abs(d_sim - s_sim) - threshold))
