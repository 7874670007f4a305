"""Faithfulness metrics for saliency maps: deletion / insertion curves and ROAD.

* Deletion and insertion (Petsiuk et al. 2018, "RISE: Randomized Input Sampling for
  Explanation of Black-box Models", Sec. 4.1): pixels are changed in order of decreasing
  saliency, `ceil(H*W / num_steps)` at a time; deletion replaces them by a substrate (zeros:
  the dataset mean for standardized inputs), insertion starts from a blurred copy (Gaussian,
  11x11, sigma 5, zero padding, as RISE's `gkern` substrate) and puts the original pixels
  back. The class score after each step is a curve on [0, 1] whose area (trapezoid rule,
  RISE's `auc`) is the metric: low is good for deletion, high for insertion.
* ROAD (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution
  Methods", ICML): remove the pixels most relevant first (MoRF) or least relevant first (LeRF)
  and impute them by noisy linear imputation: every removed pixel equals the weighted mean of
  its in-image 8-neighbours (weights 1/6 direct, 1/12 diagonal; removed neighbours are
  unknowns too), plus N(0, noise^2). Thresholds follow pytorch-grad-cam's
  `metrics/perturbation_confidence.py`: at percentile p, MoRF keeps the pixels with
  saliency < percentile_p(saliency) and LeRF those with 1 - saliency < percentile_p(1 -
  saliency), so (100 - p)% of the pixels are removed; the score is the class score after
  imputation minus before; `road_combined` = (mean LeRF - mean MoRF) / 2 over p = 10..90
  (pytorch-grad-cam's `ROADCombined`; higher = more faithful).

The imputation is a sparse symmetric positive-definite system per image (the same matrix for
every channel: the restriction of D - W to the removed pixels). It is solved here on the
device by a batched conjugate-gradient iteration (every image and channel its own step sizes,
one `lax.while_loop`, 3x3 stencils instead of a sparse matrix), started from the mean of the
kept pixels. pytorch-grad-cam solves the same system per image with scipy's sparse direct
solver; tools/cam_crosscheck.py --road compares the two. An image with no kept pixel at all
has no solution; it is imputed with 0 (plus noise).

All functions are batched over images (each its own class) and pure; the model runs
`len(curve)` times on the batch, under `lax.map`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import errors
from jaxdl.analysis.cam import jit_static

ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
_DIRECT, _DIAGONAL = 1.0 / 6.0, 1.0 / 12.0  # ROAD's neighbour weights (sum 1)


def _check(x, saliency):
  if getattr(x, "ndim", None) != 4:
    raise errors.ShapeError(f"images must be NHWC [N, H, W, C], got shape "
                            f"{tuple(getattr(x, 'shape', ()))}.")
  if tuple(saliency.shape) != tuple(x.shape[:3]):
    raise errors.ShapeError(f"saliency must be [N, H, W] = {tuple(x.shape[:3])} (one map per "
                            f"image at input resolution), got {tuple(saliency.shape)}.")


def _score_fn(model: nn.Module, variables, score: str) -> Callable:
  """f(x [N, H, W, C], classes [N]) -> score of each image's class [N]."""
  if score not in ("prob", "logit"):
    raise errors.ConfigError(f"score must be 'prob' (softmax probability) or 'logit', got "
                             f"{score!r}.")

  def f(x, classes):
    logits = model.apply(variables, x, train=False).astype(jnp.float32)
    if score == "prob":
      logits = jax.nn.log_softmax(logits, axis=-1)
    y = jnp.take_along_axis(logits, classes[:, None], axis=1)[:, 0]
    return jnp.exp(y) if score == "prob" else y
  return f


def _class_array(classes, x):
  """classes as int [N] (a scalar is broadcast), or None (the arg max, found under jit)."""
  if classes is None:
    return None
  c = jnp.asarray(classes)
  c = jnp.broadcast_to(c, (x.shape[0],)) if c.ndim == 0 else c
  if c.shape != (x.shape[0],) or not jnp.issubdtype(c.dtype, jnp.integer):
    raise errors.ShapeError(f"classes must be integers of shape [{x.shape[0]}] (one per image) "
                            f"or a scalar, got {c.dtype}{list(c.shape)}.")
  return c


def _classes(model, variables, x, classes):
  if classes is not None:
    return classes
  return jnp.argmax(model.apply(variables, x, train=False), axis=-1)


def auc(curve: jax.Array) -> jax.Array:
  """Area under curves sampled at equal steps on [0, 1] (trapezoid rule). [N, S] -> [N]."""
  s = curve.shape[-1]
  return (jnp.sum(curve, -1) - 0.5 * (curve[..., 0] + curve[..., -1])) / (s - 1)


def gaussian_blur(x: jax.Array, sigma: float = 5.0, size: int = 11) -> jax.Array:
  """Separable Gaussian blur of [N, H, W, C] with a normalized size-tap kernel, zero padding."""
  r = np.arange(size) - size // 2
  k = np.exp(-0.5 * (r / sigma) ** 2)
  k = jnp.asarray(k / k.sum(), x.dtype)
  p = size // 2
  xp = jnp.pad(x, ((0, 0), (p, p), (0, 0), (0, 0)))
  x = sum(k[i] * xp[:, i:i + x.shape[1]] for i in range(size))
  xp = jnp.pad(x, ((0, 0), (0, 0), (p, p), (0, 0)))
  return sum(k[i] * xp[:, :, i:i + x.shape[2]] for i in range(size))


def saliency_ranks(saliency: jax.Array) -> jax.Array:
  """Rank of every pixel by decreasing saliency (0 = most salient; ties by pixel index).

  [N, H, W] -> int32 [N, H, W].
  """
  n = saliency.shape[0]
  flat = saliency.reshape(n, -1)
  order = jnp.argsort(-flat, axis=1, stable=True)
  ranks = jnp.zeros_like(order).at[jnp.arange(n)[:, None], order].set(
      jnp.arange(flat.shape[1])[None, :])
  return ranks.reshape(saliency.shape).astype(jnp.int32)


def causal_curve(model: nn.Module, variables: Any, x: jax.Array, saliency: jax.Array, *,
                 mode: str, classes=None, num_steps: int = 50, substrate=None,
                 score: str = "prob") -> jax.Array:
  """RISE's deletion or insertion curve.

  Args:
    model, variables: the classifier.
    x: images [N, H, W, C] (model input space); saliency: [N, H, W].
    mode: "deletion" or "insertion".
    classes: int [N] (or scalar); None = the model's arg max on x.
    num_steps: the curve has num_steps + 1 points; step k changes the min(k * ceil(H*W /
      num_steps), H*W) most salient pixels.
    substrate: what deleted pixels become / where insertion starts: an array like x, or a
      function x -> array; None = zeros (deletion) or `gaussian_blur(x)` (insertion).
    score: "prob" (softmax probability of the class) or "logit".

  Returns:
    [N, num_steps + 1] scores; `auc` of it is the deletion / insertion metric.
  """
  _check(x, saliency)
  if mode not in ("deletion", "insertion"):
    raise errors.ConfigError(f"mode must be 'deletion' or 'insertion', got {mode!r}.")
  _score_fn(model, variables, score)  # validates `score` eagerly
  if substrate is None:
    substrate = jnp.zeros_like(x) if mode == "deletion" else gaussian_blur(x)
  elif callable(substrate):
    substrate = substrate(x)
  substrate = jnp.broadcast_to(jnp.asarray(substrate, x.dtype), x.shape)
  # `mode` is traced (a bool), so deletion and insertion share one compiled function.
  return _causal_curve(model, variables, x, saliency, _class_array(classes, x), substrate,
                       jnp.asarray(mode == "insertion"), num_steps=num_steps, score=score)


@jit_static("num_steps", "score")
def _causal_curve(model, variables, x, saliency, classes, substrate, insert, num_steps, score):
  start, finish = jnp.where(insert, substrate, x), jnp.where(insert, x, substrate)
  cls = _classes(model, variables, x, classes)
  f = _score_fn(model, variables, score)
  hw = x.shape[1] * x.shape[2]
  step = math.ceil(hw / num_steps)
  ranks = saliency_ranks(saliency)[..., None]

  def at(k):
    changed = ranks < jnp.minimum(k * step, hw)
    return f(jnp.where(changed, finish, start), cls)

  return jax.lax.map(at, jnp.arange(num_steps + 1)).T


def deletion(model, variables, x, saliency, **kwargs) -> tuple[jax.Array, jax.Array]:
  """(curve [N, S+1], AUC [N]) of RISE's deletion metric (lower = more faithful)."""
  curve = causal_curve(model, variables, x, saliency, mode="deletion", **kwargs)
  return curve, auc(curve)


def insertion(model, variables, x, saliency, **kwargs) -> tuple[jax.Array, jax.Array]:
  """(curve [N, S+1], AUC [N]) of RISE's insertion metric (higher = more faithful)."""
  curve = causal_curve(model, variables, x, saliency, mode="insertion", **kwargs)
  return curve, auc(curve)


# --------------------------------------------------------------------------------------------
# ROAD: noisy linear imputation.

def _neighbour_sum(u: jax.Array) -> jax.Array:
  """sum_j w_ij u_j over the in-image 8-neighbours j of every pixel i. [N, H, W, C]."""
  h, w = u.shape[1:3]
  p = jnp.pad(u, ((0, 0), (1, 1), (1, 1), (0, 0)))
  direct = p[:, :h, 1:w + 1] + p[:, 2:, 1:w + 1] + p[:, 1:h + 1, :w] + p[:, 1:h + 1, 2:]
  diagonal = p[:, :h, :w] + p[:, :h, 2:] + p[:, 2:, :w] + p[:, 2:, 2:]
  return _DIRECT * direct + _DIAGONAL * diagonal


def _dot(a, b):
  return jnp.sum(a * b, axis=(1, 2), keepdims=True)


def noisy_linear_impute(x: jax.Array, keep: jax.Array, *, rng_key: jax.Array,
                        noise: float = 0.01, tol: float = 1e-6,
                        max_iterations: int | None = None) -> jax.Array:
  """ROAD's noisy linear imputation of the pixels where keep == 0.

  Solves, for every removed pixel i, s_i x_i - sum_{j removed} w_ij x_j =
  sum_{j kept} w_ij img_j (s_i = sum of i's in-image neighbour weights), by batched
  conjugate gradients, then adds N(0, noise^2) to the removed pixels.

  Args:
    x: images [N, H, W, C]; keep: [N, H, W], 1 = keep, 0 = impute.
    rng_key: for the noise; noise: its standard deviation (0 = plain linear imputation).
    tol: stop when every system's residual norm <= tol * norm of its right-hand side.
    max_iterations: CG iterations cap (default 4 * (H + W), ample for blob-shaped holes).

  Returns:
    [N, H, W, C] with kept pixels unchanged.
  """
  if getattr(x, "ndim", None) != 4 or tuple(keep.shape) != tuple(x.shape[:3]):
    raise errors.ShapeError(f"noisy_linear_impute takes x [N, H, W, C] and keep [N, H, W], got "
                            f"{tuple(x.shape)} and {tuple(keep.shape)}.")
  return _impute(x, keep, rng_key, noise, tol, max_iterations)


@functools.partial(jax.jit, static_argnames=("max_iterations",))
def _impute(x, keep, rng_key, noise, tol, max_iterations):
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  x = x.astype(dtype)
  kept = (keep > 0.5).astype(dtype)[..., None]
  removed = 1.0 - kept
  s = _neighbour_sum(jnp.ones_like(x[..., :1]))

  def matvec(u):
    return removed * (s * u - _neighbour_sum(removed * u))

  b = removed * _neighbour_sum(kept * x)
  num_kept = jnp.sum(kept, axis=(1, 2), keepdims=True)
  mean_kept = jnp.sum(kept * x, axis=(1, 2), keepdims=True) / jnp.maximum(num_kept, 1.0)
  u0 = removed * mean_kept
  r0 = b - matvec(u0)
  rs0 = _dot(r0, r0)
  stop = (tol ** 2) * _dot(b, b)
  cap = max_iterations or 4 * (x.shape[1] + x.shape[2])
  safe = lambda num, den: jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)  # noqa

  def cond(state):
    k, _, _, _, rs = state
    return (k < cap) & jnp.any(rs > stop)

  def body(state):
    k, u, r, p, rs = state
    ap = matvec(p)
    active = rs > stop  # converged systems stop moving (their rs may underflow to 0)
    alpha = jnp.where(active, safe(rs, _dot(p, ap)), 0.0)
    u = u + alpha * p
    r = r - alpha * ap
    rs_new = _dot(r, r)
    p = r + safe(rs_new, rs) * p
    return k + 1, u, r, p, jnp.where(active, rs_new, rs)

  _, u, _, _, _ = jax.lax.while_loop(cond, body, (0, u0, r0, r0, rs0))
  u = u + noise * removed * jax.random.normal(rng_key, x.shape, dtype)
  return kept * x + removed * u


def road_keep_mask(saliency: jax.Array, percentile: float | jax.Array, order: str) -> jax.Array:
  """Pixels ROAD keeps at `percentile` (pytorch-grad-cam's rule). [N, H, W] -> [N, H, W]."""
  if order not in ("morf", "lerf"):
    raise errors.ConfigError(f"ROAD order must be 'morf' (most relevant first) or 'lerf' "
                             f"(least relevant first), got {order!r}.")
  return _keep_mask(saliency if order == "morf" else 1.0 - saliency, percentile)


def _keep_mask(m, percentile):
  thr = jnp.percentile(m.reshape(m.shape[0], -1), percentile, axis=1)
  return (m < thr[:, None, None]).astype(jnp.float32)


def road(model: nn.Module, variables: Any, x: jax.Array, saliency: jax.Array, *,
         rng_key: jax.Array, order: str = "morf", classes=None,
         percentiles: Sequence[float] = ROAD_PERCENTILES, noise: float = 0.01,
         score: str = "prob", tol: float = 1e-6) -> jax.Array:
  """ROAD score changes at each percentile.

  Args:
    x: images [N, H, W, C]; saliency: [N, H, W] in [0, 1] (a CAM).
    rng_key: imputation noise; order: "morf" or "lerf"; classes: int [N] or None (arg max).
    percentiles: p in (0, 100): (100 - p)% of the pixels are removed at each.
    noise, tol: see `noisy_linear_impute`; score: "prob" or "logit".

  Returns:
    [N, len(percentiles)]: score after imputation minus score on x.
  """
  _check(x, saliency)
  road_keep_mask(saliency[:, :1, :1], 50.0, order)  # validates `order` eagerly
  _score_fn(model, variables, score)
  # `order` is traced (a bool), so MoRF and LeRF share one compiled function.
  return _road(model, variables, x, saliency, _class_array(classes, x), rng_key,
               jnp.asarray(percentiles, jnp.float32), noise, tol, jnp.asarray(order == "lerf"),
               score=score)


@jit_static("score")
def _road(model, variables, x, saliency, classes, rng_key, percentiles, noise, tol, lerf,
          score):
  cls = _classes(model, variables, x, classes)
  f = _score_fn(model, variables, score)
  base = f(x, cls)
  keys = jax.random.split(rng_key, percentiles.shape[0])

  def at(args):
    p, key = args
    keep = _keep_mask(jnp.where(lerf, 1.0 - saliency, saliency), p)
    return f(_impute(x, keep, key, noise, tol, None), cls) - base

  return jax.lax.map(at, (percentiles, keys)).T


def road_combined(model: nn.Module, variables: Any, x: jax.Array, saliency: jax.Array, *,
                  rng_key: jax.Array, **kwargs) -> jax.Array:
  """(mean LeRF change - mean MoRF change) / 2 per image [N] (pytorch-grad-cam's ROADCombined).

  Higher is more faithful: removing unimportant pixels should keep the score, removing
  important ones should drop it. Keyword arguments as `road`.
  """
  k1, k2 = jax.random.split(rng_key)
  lerf = road(model, variables, x, saliency, rng_key=k1, order="lerf", **kwargs)
  morf = road(model, variables, x, saliency, rng_key=k2, order="morf", **kwargs)
  return (jnp.mean(lerf, -1) - jnp.mean(morf, -1)) / 2
