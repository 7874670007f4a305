"""Class activation maps for any jaxdl image model: Grad-CAM, Grad-CAM++ and Eigen-CAM.

* Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization", Eq. 1-2): channel weights alpha_k = mean_ij dy^c / dA^k_ij
  of the class logit y^c (before the softmax) w.r.t. the target activations A [h, w, C], and
  the map L = ReLU(sum_k alpha_k A^k).
* Grad-CAM++ (Chattopadhyay et al. 2018, "Grad-CAM++: Improved Visual Explanations for Deep
  Convolutional Networks", Eq. 19 with the exponential of Eq. 17 left out, as
  pytorch-grad-cam does): with g = dy^c / dA,
  a_ij^k = g^2 / (2 g^2 + sum_ab A^k_ab g^3 + 1e-6) (0 where g = 0) and
  alpha_k = sum_ij ReLU(g_ij^k) a_ij^k.
* Eigen-CAM (Muhammad & Yeasin 2020, "Eigen-CAM: Class Activation Map using Principal
  Components", Eq. 3-4): the activations as a matrix [h*w, C], centred over space, projected on
  their first right-singular vector. One batched `jnp.linalg.svd`, no per-image loop.

Conventions are those of jacobgil/pytorch-grad-cam 1.5 (`base_cam.py`, `utils/image.py`), so
the maps agree with it to float32 precision (tools/cam_crosscheck.py): per target layer the map
goes through ReLU, a per-image min-max normalization (m - min) / (1e-7 + max(m - min)) and a
bilinear resize to the input size with OpenCV's INTER_LINEAR rule (half-pixel centres, edge
samples clamped); several target layers are averaged after a ReLU and normalized once more.
The target of the gradient is the raw logit of each image's own class (default: its arg max).

One deliberate difference: an SVD's singular vectors are defined up to sign, and
pytorch-grad-cam's `EigenCAM` keeps whatever sign LAPACK returns, so its map is sometimes the
negative of the salient region (then cut away by the ReLU). We flip the projection where
|min| > |max| (the sign correction of Seg-Eigen-CAM, Chung & Ying 2025, Eq. 13, which
pytorch-grad-cam ships as `get_2d_projection_with_sign_correction`), making the map
independent of the SVD implementation.

Target layers are named by their path in the Flax module tree ("layer4_2",
"denseblock4/denselayer16"; `list_layers` prints them) and captured without editing the
model: an `nn.intercept_methods` interceptor records the module's output and adds a zero
perturbation to it, whose gradient is dy^c / dA. jaxdl models apply their ReLUs outside
modules (`sow_relu(self, bn(x))`), while timm fuses them (`BatchNormAct2d`) and hooks see the
activated map; `TargetLayer(path, activation="relu")` (string form "norm5:relu") gives that
map and the gradient w.r.t. it. Because JAX's ReLU has derivative 0 at 0, which would mask the
gradient where the map is 0, the interceptor hands the model max(z, tiny) + perturbation
(tiny = the smallest normal float, 1.2e-38 in float32; for ReLU6 also min(., 6 - ulp)) so the
model's own ReLU passes the whole gradient; the forward values change by at most that amount.

Default target layers (`default_target_layer`), chosen as pytorch-grad-cam's README does for
each architecture (the last convolutional stage):
  resnet18/34/50: the last block, `layer4_{n-1}` (timm `layer4[-1]`); resnet20/56 and
  preact_resnet18: the last block of the last stage; densenet*: `norm5` + ReLU (timm
  `features.norm5`, a BatchNormAct2d); mobilenetv2_*: `bn2` + ReLU6 (after `conv_head`);
  mcunet_*: the last block; rdnet_*: the last dense stage; vgg*: the last conv (or its BN) +
  ReLU, before the last max pool (pytorch-grad-cam's `features[-1]` is that pool; the map is
  then twice as fine); cnn*: the last conv (or its BN) + ReLU.

All functions are pure and batched (each image has its own class); they run under `jax.jit`
(the model and the target layers are static: hashable Flax modules, strings or `TargetLayer`s).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import errors

_HIGHEST = jax.lax.Precision.HIGHEST
_EPS_NORMALIZE = 1e-7     # pytorch-grad-cam utils/image.py scale_cam_image
_EPS_GRADCAM_PP = 1e-6    # pytorch-grad-cam grad_cam_plusplus.py
_ACTIVATIONS = ("relu", "relu6")


@dataclasses.dataclass(frozen=True)
class TargetLayer:
  """A module whose output is the feature map a CAM is computed on.

  Attributes:
    path: module names from the root joined by "/", e.g. "layer4_2" or "denseblock4".
    activation: None, "relu" or "relu6": the nonlinearity the model applies to this module's
      output next (outside any module); the CAM then uses the activated map and the gradient
      w.r.t. it. Only meaningful when the model does apply it next.
  """
  path: str
  activation: str | None = None

  def __post_init__(self):
    if self.activation not in (None,) + _ACTIVATIONS:
      raise errors.ConfigError(f"TargetLayer activation must be None, 'relu' or 'relu6', got "
                               f"{self.activation!r}.")

  @classmethod
  def parse(cls, spec: Union[str, "TargetLayer"]) -> "TargetLayer":
    """"layer4_2" -> TargetLayer("layer4_2"); "norm5:relu" -> TargetLayer("norm5", "relu")."""
    if isinstance(spec, TargetLayer):
      return spec
    if not isinstance(spec, str):
      raise errors.ConfigError(f"target_layer must be a module path string (e.g. 'layer4_2' "
                               f"or 'norm5:relu') or a TargetLayer, got {spec!r}.")
    path, _, act = spec.partition(":")
    return cls(path.strip("/"), act or None)

  def __str__(self):
    return self.path + (f":{self.activation}" if self.activation else "")


TargetSpec = Union[None, str, TargetLayer, Sequence[Union[str, TargetLayer]]]


def default_target_layer(model: nn.Module) -> TargetLayer:
  """The default CAM target of a jaxdl image model (see the module docstring)."""
  from jaxdl.models import cnn, densenet, mobilenet, rdnet, resnet, vgg
  if isinstance(model, (resnet.ResNet, resnet.PreActResNet)):
    return TargetLayer(f"layer{len(model.stage_sizes)}_{model.stage_sizes[-1] - 1}")
  if isinstance(model, resnet.CifarResNet):
    return TargetLayer(f"layer3_{(model.depth - 2) // 6 - 1}")
  if isinstance(model, densenet.DenseNet):
    return TargetLayer("norm5", "relu")
  if isinstance(model, mobilenet.InvertedResidualNet):
    if model.num_features:
      return TargetLayer("bn2", "relu6")
    s, j = mobilenet.stage_indices(model.channels)[-1]
    return TargetLayer(f"blocks_{s}_{j}")
  if isinstance(model, rdnet.RDNet):
    last = len(model.growth_rates) - 1
    return TargetLayer(f"dense_stages_{last}_{2 if last > 0 else 0}")
  if isinstance(model, vgg.VGG):
    idx, last = 0, None
    for v in model.cfg:  # the same index walk as VGG.__call__ (timm's nn.Sequential indices)
      if v == "M":
        idx += 1
        continue
      last = idx + 1 if model.use_bn else idx
      idx += 3 if model.use_bn else 2
    return TargetLayer(f"features_{last}", "relu")
  if isinstance(model, cnn.CNN):
    s, c = len(model.features) - 1, model.convs_per_stage - 1
    return TargetLayer(f"stage{s}_bn{c}" if model.use_bn else f"stage{s}_conv{c}", "relu")
  raise errors.ConfigError(f"no default CAM target layer for {type(model).__name__}; pass "
                           "target_layer='<module path>' (jaxdl.analysis.cam.list_layers "
                           "lists the candidates).")


def _targets(model: nn.Module, target_layer: TargetSpec) -> tuple[TargetLayer, ...]:
  if target_layer is None:
    return (default_target_layer(model),)
  if isinstance(target_layer, (str, TargetLayer)):
    return (TargetLayer.parse(target_layer),)
  out = tuple(TargetLayer.parse(t) for t in target_layer)
  if not out:
    raise errors.ConfigError("target_layer is an empty list; give at least one module path.")
  return out


def _check_images(x) -> None:
  if getattr(x, "ndim", None) != 4:
    raise errors.ShapeError(f"CAMs take NHWC images [N, H, W, C], got shape "
                            f"{tuple(getattr(x, 'shape', ()))}.")


def jit_static(*static: str):
  """`jax.jit` with `model` and the named keyword arguments static.

  A model with an unhashable field (a list instead of a tuple) cannot be a static argument;
  it then runs without this outer jit (still traced once when the caller jits).
  """
  def wrap(fn):
    jitted = jax.jit(fn, static_argnames=("model",) + static)

    @functools.wraps(fn)
    def call(model, *args, **kwargs):
      try:
        hash(model)
      except TypeError:
        return fn(model, *args, **kwargs)
      return jitted(model, *args, **kwargs)
    return call
  return wrap


# --------------------------------------------------------------------------------------------
# Capturing target activations (and the gradient w.r.t. them) without editing the model.

def _pass_through(kind: str, z: jax.Array) -> jax.Array:
  """z moved off the activation's kinks so that its derivative there is 1, not 0."""
  info = jnp.finfo(z.dtype)
  if kind == "relu":
    return jnp.maximum(z, info.tiny)
  six = jnp.asarray(6.0, z.dtype)
  return jnp.clip(z, info.tiny, six - info.eps * 4)  # 4 eps = one ulp of 6 (binade [4, 8))


def _apply_activation(kind: str | None, z: jax.Array) -> jax.Array:
  if kind is None:
    return z
  return jax.nn.relu(z) if kind == "relu" else jax.nn.relu6(z)


def capture(model: nn.Module, variables, x: jax.Array, target_layer: TargetSpec = None, *,
            perturbations: Sequence[jax.Array] | None = None):
  """Runs `model.apply(variables, x, train=False)` and returns the target layers' maps.

  Args:
    model, variables: a Flax module and its variables.
    x: images [N, H, W, C].
    target_layer: a path, a `TargetLayer`, a list of them, or None (the model's default).
    perturbations: optional arrays, one per target layer, shaped as its output; each is added
      to that output (after the ReLU pass-through, see the module docstring), so that the
      gradient w.r.t. it is the gradient w.r.t. the target map.

  Returns:
    (logits [N, num_classes], tuple of target maps [N, h, w, C_l]).
  """
  _check_images(x)
  targets = _targets(model, target_layer)
  found: dict[int, jax.Array] = {}
  seen: list[str] = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != "__call__":
      return out
    path = "/".join(context.module.path)
    if isinstance(out, jax.Array) and out.ndim == 4:
      seen.append(path)
    for i, t in enumerate(targets):
      if t.path != path:
        continue
      if i in found:
        raise errors.ConfigError(f"target layer {path!r} is called more than once in one "
                                 "forward pass; choose a module that runs once.")
      if not isinstance(out, jax.Array) or out.ndim != 4:
        raise errors.ShapeError(f"target layer {path!r} returns "
                                f"{getattr(out, 'shape', type(out).__name__)}, not a feature "
                                "map [N, h, w, C]; choose a convolutional layer.")
      found[i] = _apply_activation(t.activation, out)
      if perturbations is not None:
        z = out if t.activation is None else _pass_through(t.activation, out)
        out = z + perturbations[i].astype(z.dtype)
    return out

  with nn.intercept_methods(interceptor):
    logits = model.apply(variables, x, train=False)
  missing = [str(t) for i, t in enumerate(targets) if i not in found]
  if missing:
    shown = ", ".join(repr(p) for p in seen[-12:])
    raise errors.UnknownNameError(
        f"target layer {missing[0]!r} is not a module of {type(model).__name__}; modules "
        f"with feature-map outputs include (last 12): {shown} (see cam.list_layers).")
  return logits, tuple(found[i] for i in range(len(targets)))


def list_layers(model: nn.Module, variables, x: jax.Array) -> list[tuple[str, tuple]]:
  """(path, output shape) of every module call with a 4-D output, in forward order.

  Traced with `jax.eval_shape`: nothing is computed or compiled.
  """
  _check_images(x)
  seen: list[tuple[str, tuple]] = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and isinstance(out, jax.Array) and out.ndim == 4:
      seen.append(("/".join(context.module.path), tuple(out.shape)))
    return out

  def run(v, x):
    with nn.intercept_methods(interceptor):
      return model.apply(v, x, train=False)

  jax.eval_shape(run, variables, x)
  return seen


def _classes(classes, n: int) -> jax.Array | None:
  if classes is None:
    return None
  c = jnp.asarray(classes)
  if not jnp.issubdtype(c.dtype, jnp.integer):
    raise errors.ConfigError(f"classes must be integers (one class index per image), got "
                             f"dtype {c.dtype}.")
  if c.ndim == 0:
    c = jnp.broadcast_to(c, (n,))
  if c.shape != (n,):
    raise errors.ShapeError(f"classes must have shape [{n}] (one per image) or be a scalar, "
                            f"got {tuple(c.shape)}.")
  return c


def activations_and_gradients(model: nn.Module, variables, x: jax.Array, *,
                              target_layer: TargetSpec = None, classes=None):
  """Target maps, and gradients of each image's class logit w.r.t. them, in one pass.

  Args:
    x: images [N, H, W, C]; classes: int [N] (or a scalar for all), None = arg max logit.

  Returns:
    dict with "activations" and "gradients" (tuples of [N, h, w, C_l] float32, one per target
    layer), "logits" [N, num_classes] and "classes" [N].
  """
  _check_images(x)
  return _activations_and_gradients(model, variables, x, _classes(classes, x.shape[0]),
                                    targets=_targets(model, target_layer))


@jit_static("targets")
def _activations_and_gradients(model, variables, x, cls, targets):
  shapes = jax.eval_shape(lambda v, x: capture(model, v, x, targets), variables, x)[1]
  zeros = tuple(jnp.zeros(s.shape, s.dtype) for s in shapes)

  def score(perturbations):
    logits, acts = capture(model, variables, x, targets, perturbations=perturbations)
    c = jnp.argmax(jax.lax.stop_gradient(logits), -1) if cls is None else cls
    # Images are independent (eval mode), so the gradient of the sum is each image's own.
    y = jnp.take_along_axis(logits.astype(jnp.float32), c[:, None], axis=1)
    return jnp.sum(y), (acts, logits, c)

  grads, (acts, logits, c) = jax.grad(score, has_aux=True)(zeros)
  f32 = lambda t: tuple(a.astype(jnp.float32) for a in t)  # noqa: E731
  return {"activations": f32(acts), "gradients": f32(grads), "logits": logits, "classes": c}


# --------------------------------------------------------------------------------------------
# Post-processing as pytorch-grad-cam: ReLU, min-max, resize, average over layers.

def normalize_cam(cam: jax.Array) -> jax.Array:
  """Per-image min-max: (m - min) / (1e-7 + max(m - min)). cam: [N, h, w] -> [N, h, w]."""
  cam = cam - jnp.min(cam, axis=(1, 2), keepdims=True)
  return cam / (_EPS_NORMALIZE + jnp.max(cam, axis=(1, 2), keepdims=True))


@functools.lru_cache(maxsize=64)
def _linear_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] interpolation weights of OpenCV's INTER_LINEAR along one axis.

  Source coordinate f = (i + 0.5) * n_in / n_out - 0.5, s = floor(f), weights (1 - t, t) on
  (s, s + 1) with t = f - s; s < 0 reads pixel 0 and s >= n_in - 1 reads the last pixel
  (OpenCV's resize.cpp clamps both with t = 0).
  """
  f = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
  s = np.floor(f).astype(np.int64)
  t = f - s
  low, high = s < 0, s >= n_in - 1
  t[low | high] = 0.0
  s[low] = 0
  s[high] = n_in - 1
  m = np.zeros((n_out, n_in), np.float64)
  rows = np.arange(n_out)
  np.add.at(m, (rows, s), 1.0 - t)
  np.add.at(m, (rows, np.minimum(s + 1, n_in - 1)), t)
  return m.astype(np.float32)


def resize_cam(cam: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear resize [N, h, w] -> [N, H, W] with OpenCV's INTER_LINEAR rule (upsampling).

  Separable: two small matrix products, exact in float32 (no gather).
  """
  h, w = cam.shape[1:]
  if (h, w) == tuple(size):
    return cam
  rh = jnp.asarray(_linear_resize_matrix(h, size[0]))
  rw = jnp.asarray(_linear_resize_matrix(w, size[1]))
  return jnp.einsum("Hh,nhw,Ww->nHW", rh, cam, rw, precision=_HIGHEST)


def combine_layers(cams: Sequence[jax.Array], size: tuple[int, int]) -> jax.Array:
  """pytorch-grad-cam's post-processing of per-layer maps [N, h_l, w_l] -> [N, H, W] in [0, 1].

  Per layer: ReLU, min-max, resize; then ReLU, mean over layers, min-max.
  """
  scaled = [resize_cam(normalize_cam(jax.nn.relu(c.astype(jnp.float32))), size) for c in cams]
  return normalize_cam(jnp.mean(jax.nn.relu(jnp.stack(scaled)), axis=0))


# --------------------------------------------------------------------------------------------
# The three methods.

def grad_cam_weights(activations: jax.Array, gradients: jax.Array) -> jax.Array:
  """Grad-CAM channel weights: spatial mean of the gradients. [N, h, w, C] -> [N, C]."""
  del activations
  return jnp.mean(gradients, axis=(1, 2))


def grad_cam_plus_plus_weights(activations: jax.Array, gradients: jax.Array) -> jax.Array:
  """Grad-CAM++ channel weights (Eq. 19, pytorch-grad-cam's form). [N, h, w, C] -> [N, C]."""
  g2 = gradients * gradients
  g3 = g2 * gradients
  sum_a = jnp.sum(activations, axis=(1, 2), keepdims=True)
  aij = g2 / (2.0 * g2 + sum_a * g3 + _EPS_GRADCAM_PP)
  aij = jnp.where(gradients != 0, aij, 0.0)
  return jnp.sum(jax.nn.relu(gradients) * aij, axis=(1, 2))


def weighted_map(activations: jax.Array, weights: jax.Array) -> jax.Array:
  """sum_k w_k A^k: [N, h, w, C], [N, C] -> [N, h, w] (before the ReLU)."""
  return jnp.einsum("nhwc,nc->nhw", activations, weights, precision=_HIGHEST)


def eigen_projection(activations: jax.Array) -> jax.Array:
  """First principal component of each image's centred activations. [N, h, w, C] -> [N, h, w].

  A batched SVD of the [N, h*w, C] matrices; projection = A_centred @ v_1, sign-corrected so
  that |max| >= |min| (module docstring).
  """
  n, h, w, c = activations.shape
  a = activations.reshape(n, h * w, c).astype(jnp.float32)
  a = jnp.where(jnp.isnan(a), 0.0, a)
  a = a - jnp.mean(a, axis=1, keepdims=True)
  _, _, vt = jnp.linalg.svd(a, full_matrices=False)
  p = jnp.einsum("npc,nc->np", a, vt[:, 0, :], precision=_HIGHEST)
  flip = jnp.abs(jnp.min(p, axis=1)) > jnp.abs(jnp.max(p, axis=1))
  p = jnp.where(flip[:, None], -p, p)
  return p.reshape(n, h, w)


def _gradient_cam(weight_fn: Callable, model, variables, x, targets, classes):
  out = _activations_and_gradients(model, variables, x, classes, targets=targets)
  cams = [weighted_map(a, weight_fn(a, g))
          for a, g in zip(out["activations"], out["gradients"])]
  return combine_layers(cams, x.shape[1:3])


@jit_static("targets")
def _grad_cam(model, variables, x, classes, targets):
  return _gradient_cam(grad_cam_weights, model, variables, x, targets, classes)


@jit_static("targets")
def _grad_cam_pp(model, variables, x, classes, targets):
  return _gradient_cam(grad_cam_plus_plus_weights, model, variables, x, targets, classes)


@jit_static("targets")
def _eigen_cam(model, variables, x, targets):
  _, acts = capture(model, variables, x, targets)
  return combine_layers([eigen_projection(a) for a in acts], x.shape[1:3])


def grad_cam(model: nn.Module, variables: Any, x: jax.Array, *,
             target_layer: TargetSpec = None, classes=None) -> jax.Array:
  """Grad-CAM maps, one per image for its own class.

  Args:
    model, variables: a jaxdl (or any Flax) image classifier and its variables.
    x: images [N, H, W, C], preprocessed as the model expects.
    target_layer: module path(s) or `TargetLayer`(s); None = `default_target_layer(model)`.
      With several, the maps are averaged (pytorch-grad-cam's aggregation).
    classes: int [N] (or a scalar), the class explained for each image; None = arg max.

  Returns:
    [N, H, W] float32 in [0, 1].
  """
  _check_images(x)
  return _grad_cam(model, variables, x, _classes(classes, x.shape[0]),
                   targets=_targets(model, target_layer))


def grad_cam_plus_plus(model: nn.Module, variables: Any, x: jax.Array, *,
                       target_layer: TargetSpec = None, classes=None) -> jax.Array:
  """Grad-CAM++ maps [N, H, W] in [0, 1]; arguments as `grad_cam`."""
  _check_images(x)
  return _grad_cam_pp(model, variables, x, _classes(classes, x.shape[0]),
                      targets=_targets(model, target_layer))


def eigen_cam(model: nn.Module, variables: Any, x: jax.Array, *,
              target_layer: TargetSpec = None) -> jax.Array:
  """Eigen-CAM maps [N, H, W] in [0, 1] (class-agnostic); arguments as `grad_cam`."""
  _check_images(x)
  return _eigen_cam(model, variables, x, targets=_targets(model, target_layer))


METHODS: dict[str, Callable[..., jax.Array]] = {
    "gradcam": grad_cam, "gradcam++": grad_cam_plus_plus, "eigencam": eigen_cam}
