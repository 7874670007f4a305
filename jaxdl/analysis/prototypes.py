"""Interpretability of part-prototype networks: consistency and stability scores, push,
prototype visualization.

Scores from "Evaluation and Improvement of Interpretability for Self-Explainable
Part-Prototype Networks" (Huang et al., ICCV 2023; hqhQAQ/EvalProtoPNet
`util/eval_interpretability.py`):
  - for each test image, the activation maps of the prototypes of its ground-truth class are
    upsampled (bicubic, as cv2.INTER_CUBIC) to the image size; the box
    rows [max(0, y-36), min(S, y+36)] x cols [max(0, x-36), min(S, x+36)] (inclusive) around
    the first maximum (y, x) "hits" every annotated part whose keypoint lies inside;
  - consistency: per prototype, the mean hit of each part over the images of its class where
    that part is present (an empty denominator counts as 1); the prototype is consistent if
    some part reaches 0.8; score = 100 x fraction of consistent prototypes;
  - stability: Gaussian noise N(0, 0.2), clipped to +-0.25, on the normalized image; per
    prototype the fraction of images whose hit vector is unchanged; score = 100 x mean.
Push ("This Looks Like That", Chen et al. 2019, `push.py`): every prototype is replaced by
its nearest feature-map patch among the training images of its class; the source image, the
patch position and the high-activation box (95th percentile of the upsampled activation
map, `find_high_activation_crop`) are remembered for visualization.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import compiler, errors

# --------------------------------------------------------------------------- upsampling


@functools.lru_cache(maxsize=64)
def cubic_resize_matrix(out_size: int, in_size: int, a: float = -0.75) -> np.ndarray:
  """[out, in] matrix of OpenCV's INTER_CUBIC resize along one axis.

  OpenCV: source coordinate (dst + 0.5) * in/out - 0.5, Keys cubic kernel with a = -0.75,
  taps floor(x)-1 .. floor(x)+2 clamped to the border (replicate), weights not renormalized.
  """
  scale = in_size / out_size
  m = np.zeros((out_size, in_size), np.float64)
  for dst in range(out_size):
    fx = (dst + 0.5) * scale - 0.5
    sx = int(np.floor(fx))
    t = fx - sx
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    w3 = 1.0 - w0 - w1 - w2
    for k, wk in enumerate((w0, w1, w2, w3)):
      m[dst, min(max(sx + k - 1, 0), in_size - 1)] += wk
  return m


def _size2(image_size) -> tuple[int, int]:
  if isinstance(image_size, (int, np.integer)):
    return int(image_size), int(image_size)
  h, w = image_size
  return int(h), int(w)


def upsample_bicubic(maps, image_size):
  """Bicubic upsampling (cv2.INTER_CUBIC) of [..., h, w] maps to [..., H, W]."""
  big_h, big_w = _size2(image_size)
  h, w = maps.shape[-2:]
  my = jnp.asarray(cubic_resize_matrix(big_h, h), jnp.float32)
  mx = jnp.asarray(cubic_resize_matrix(big_w, w), jnp.float32)
  return jnp.einsum("Yh,...hw,Xw->...YX", my, maps.astype(jnp.float32), mx,
                    precision=jax.lax.Precision.HIGHEST)


# --------------------------------------------------------------------------- scores


def _check_maps(activation_maps, part_locations):
  if activation_maps.ndim != 4:
    raise errors.ShapeError(
        f"activation_maps must be [images, prototypes, h, w], got shape {activation_maps.shape}")
  if part_locations.ndim != 3 or part_locations.shape[-1] != 2 or \
      part_locations.shape[0] != activation_maps.shape[0]:
    raise errors.ShapeError(
        f"part_locations must be [images, parts, 2] (x, y) with {activation_maps.shape[0]} "
        f"images, got shape {part_locations.shape}")


def part_hits(activation_maps, part_locations, image_size, *, half_size: int = 36):
  """Which annotated parts each prototype's activation box covers.

  Args:
    activation_maps: [N, P, h, w], row n = the prototypes of image n's ground-truth class.
    part_locations: [N, K, 2] pixel (x, y) of each part in the (resized) image, NaN where a
      part is absent. The reference truncates keypoints to integers first.
    image_size: S or (H, W), the size the maps are upsampled to.
    half_size: half the side of the box around the maximum (36 for 224 x 224 images).
  Returns:
    bool [N, P, K]: part k's keypoint lies in prototype p's box (bounds inclusive).
  """
  activation_maps = jnp.asarray(activation_maps)
  part_locations = jnp.asarray(part_locations, jnp.float32)
  _check_maps(activation_maps, part_locations)
  big_h, big_w = _size2(image_size)
  up = upsample_bicubic(activation_maps, (big_h, big_w))
  n, p = up.shape[:2]
  flat = jnp.argmax(up.reshape(n, p, -1), axis=-1)  # first maximum in row-major order
  y, x = flat // big_w, flat % big_w
  y0, y1 = jnp.maximum(0, y - half_size), jnp.minimum(big_h, y + half_size)
  x0, x1 = jnp.maximum(0, x - half_size), jnp.minimum(big_w, x + half_size)
  px = part_locations[:, None, :, 0]
  py = part_locations[:, None, :, 1]
  # NaN (absent part) compares False: never a hit.
  return ((py >= y0[..., None]) & (py <= y1[..., None]) &
          (px >= x0[..., None]) & (px <= x1[..., None]))


def _groups(n: int, labels):
  """Row indices of each class ([all rows] when no labels are given)."""
  if labels is None:
    return [np.arange(n)]
  labels = np.asarray(labels)
  return [np.nonzero(labels == c)[0] for c in np.unique(labels)]


def consistency_score(activation_maps, part_locations, image_size, *, half_size: int = 36,
                      threshold: float = 0.8, labels=None) -> float:
  """Consistency score in [0, 100] (EvalProtoPNet `evaluate_consistency`).

  Prototype p of a class is consistent if, for some part k, it hits k in at least
  `threshold` of the class's images where k is present. `labels` [N] groups the rows by
  class (prototype p of row n is prototype p of class labels[n]); without labels all rows
  are one class.
  """
  hits = np.asarray(part_hits(activation_maps, part_locations, image_size,
                              half_size=half_size))
  present = ~np.isnan(np.asarray(part_locations, np.float64)[..., 0])  # [N, K]
  consistent = []
  for rows in _groups(hits.shape[0], labels):
    denom = present[rows].sum(axis=0)
    denom = np.where(denom == 0, 1, denom)
    mean_hit = hits[rows].sum(axis=0) / denom  # [P, K]
    consistent.append((mean_hit >= threshold).any(axis=-1))
  return float(np.mean(np.concatenate(consistent)) * 100.0)


def stability_score(activation_maps, noisy_activation_maps, part_locations, image_size, *,
                    half_size: int = 36, labels=None) -> float:
  """Stability score in [0, 100] (EvalProtoPNet `evaluate_stability`).

  Per prototype, the fraction of its class's images whose part-hit vector is the same with
  and without noise on the input; the score is the mean over prototypes (groups by `labels`
  as in `consistency_score`).
  """
  hits = np.asarray(part_hits(activation_maps, part_locations, image_size,
                              half_size=half_size))
  noisy = np.asarray(part_hits(noisy_activation_maps, part_locations, image_size,
                               half_size=half_size))
  same = (hits == noisy).all(axis=-1)  # [N, P]
  per_proto = [same[rows].mean(axis=0) for rows in _groups(same.shape[0], labels)]
  return float(np.mean(np.concatenate(per_proto)) * 100.0)


def perturb(normalized_images, rng_key, *, std: float = 0.2, eps: float = 0.25):
  """The stability score's noise: N(0, std) clipped to [-eps, eps], on normalized images."""
  noise = std * jax.random.normal(rng_key, normalized_images.shape, jnp.float32)
  return normalized_images + jnp.clip(noise, -eps, eps).astype(normalized_images.dtype)


# --------------------------------------------------------------------------- model helpers

_JITTED: dict = {}


def jitted_apply(model, method: str | None = None, preprocess: Callable | None = None, **kw):
  """A jitted `(variables, x) -> model.apply(variables, preprocess(x), method=..., **kw)`,
  cached per (model, method, preprocess, kw) so that repeated calls do not recompile."""
  key = (id(model), method, id(preprocess), tuple(sorted(kw.items())))
  if key not in _JITTED:
    prep = preprocess or (lambda x: x)
    fn = compiler.jit(lambda v, x: model.apply(v, prep(x), method=method, **kw))
    _JITTED[key] = (model, preprocess, fn)  # holding the objects keeps their ids unique
  return _JITTED[key][2]


def class_activation_maps(model, variables, x, labels, *, batch_size: int = 64):
  """[N, ppc, h, w] activation maps of the prototypes of each image's class.

  x: [N, H, W, C] normalized images; labels: [N].
  """
  ppc = model.prototypes_per_class
  fn = jitted_apply(model, "activation_maps")
  out = []
  for i in range(0, x.shape[0], batch_size):
    maps = fn(variables, jnp.asarray(x[i:i + batch_size]))  # [B, h, w, P]
    lab = np.asarray(labels[i:i + batch_size])
    idx = lab[:, None] * ppc + np.arange(ppc)
    maps = jnp.moveaxis(maps, -1, 1)  # [B, P, h, w]
    out.append(np.asarray(jnp.take_along_axis(maps, jnp.asarray(idx)[:, :, None, None],
                                              axis=1)))
  return np.concatenate(out)


def interpretability_scores(model, variables, images, labels, part_locations,
                            preprocess: Callable, *, rng_key=None, half_size: int = 36,
                            threshold: float = 0.8, batch_size: int = 64) -> dict:
  """Consistency and stability of a trained network on annotated images.

  Args:
    images: [N, H, W, C] raw images (what `preprocess` normalizes).
    labels: [N] ground-truth classes; part_locations: [N, K, 2] (x, y), NaN if absent.
  Returns:
    {"consistency": float, "stability": float} in [0, 100].
  """
  rng_key = jax.random.key(0) if rng_key is None else rng_key
  x = preprocess(jnp.asarray(images))
  size = tuple(images.shape[1:3])
  maps = class_activation_maps(model, variables, x, labels, batch_size=batch_size)
  noisy = class_activation_maps(model, variables, perturb(x, rng_key), labels,
                                batch_size=batch_size)
  return {
      "consistency": consistency_score(maps, part_locations, size, half_size=half_size,
                                       threshold=threshold, labels=labels),
      "stability": stability_score(maps, noisy, part_locations, size, half_size=half_size,
                                   labels=labels),
  }


def high_activation_box(upsampled_map, percentile: float = 95) -> tuple[int, int, int, int]:
  """(y0, y1, x0, x1), end exclusive, of the pixels at or above the percentile
  (ProtoPNet `find_high_activation_crop`)."""
  a = np.asarray(upsampled_map)
  mask = a >= np.percentile(a, percentile)
  rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
  return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def push_prototypes(model, variables, images, labels, preprocess: Callable, *,
                    batch_size: int = 64, branch: str = "support",
                    with_boxes: bool = True) -> tuple[Any, dict]:
  """Projects every prototype onto its nearest training patch of its class.

  Args:
    images: [N, H, W, C] raw training images (no augmentation); labels: [N].
    preprocess: raw images -> network inputs.
  Returns:
    (new variables with the prototypes replaced, info) where info holds per prototype
    "image" (index into images), "position" (row, col on the feature map), "distance"
    (the min distance found) and, with `with_boxes`, "box" (y0, y1, x0, x1) of the
    high-activation region in the source image.
  """
  num_p = model.num_prototypes
  proto_class = np.arange(num_p) // model.prototypes_per_class
  fwd = jitted_apply(model, "push_forward", branch=branch)
  best = np.full(num_p, np.inf)
  best_img = np.full(num_p, -1)
  best_pos = np.zeros(num_p, np.int64)
  best_vec = None
  for i in range(0, images.shape[0], batch_size):
    xb = preprocess(jnp.asarray(images[i:i + batch_size]))
    z, dist, argmin = fwd(variables, xb)
    lab = np.asarray(labels[i:i + batch_size])
    dist = np.where(lab[:, None] == proto_class[None, :], np.asarray(dist), np.inf)
    b = np.argmin(dist, axis=0)  # best image of the batch per prototype
    d = dist[b, np.arange(num_p)]
    better = d < best
    if best_vec is None:
      best_vec = np.zeros((num_p, z.shape[-1]), np.float32)
    if better.any():
      zf = np.asarray(z).reshape(z.shape[0], -1, z.shape[-1])
      pos = np.asarray(argmin)[b, np.arange(num_p)]
      best[better] = d[better]
      best_img[better] = i + b[better]
      best_pos[better] = pos[better]
      best_vec[better] = zf[b[better], pos[better]]
  missing = np.nonzero(best_img < 0)[0]
  if len(missing):
    raise errors.ConfigError(
        f"no training image of the class of prototype(s) {missing[:5].tolist()} in the push "
        "set; push on a set that holds every class")
  w = z.shape[2]
  params = jax.tree.map(lambda a: a, variables["params"])
  prefix = "prototypes" if model.variant != "stprotopnet" else f"prototypes_{branch}"
  params = dict(params)
  params[prefix] = {"prototype_vectors": jnp.asarray(best_vec).astype(
      params[prefix]["prototype_vectors"].dtype)}
  new_variables = dict(variables)
  new_variables["params"] = params
  info = {"image": best_img, "position": np.stack([best_pos // w, best_pos % w], -1),
          "distance": best}
  if with_boxes:
    info["box"] = prototype_boxes(model, new_variables, images, best_img, preprocess,
                                  branch=branch, batch_size=batch_size)
  return new_variables, info


def prototype_boxes(model, variables, images, source_images, preprocess, *,
                    branch: str = "support", percentile: float = 95, batch_size: int = 64):
  """[P, 4] high-activation boxes (y0, y1, x0, x1) of each prototype on its source image."""
  fn = jitted_apply(model, "activation_maps", branch=branch)
  size = images.shape[1:3]
  boxes = np.zeros((len(source_images), 4), np.int64)
  uniq = np.unique(source_images)
  for i in range(0, len(uniq), batch_size):
    ids = uniq[i:i + batch_size]
    maps = np.asarray(fn(variables, preprocess(jnp.asarray(images[ids]))))  # [B, h, w, P]
    for j in np.nonzero(np.isin(source_images, ids))[0]:
      b = int(np.searchsorted(ids, source_images[j]))
      up = np.asarray(upsample_bicubic(jnp.asarray(maps[b, :, :, j]), size))
      boxes[j] = high_activation_box(up, percentile)
  return boxes


# --------------------------------------------------------------------------- plots


def plot_prototypes(images, push_info, *, prototypes=None, columns: int = 10, ax_size=1.4):
  """Grid of prototype source images with their high-activation boxes (matplotlib)."""
  import matplotlib.pyplot as plt
  from matplotlib.patches import Rectangle
  protos = np.arange(len(push_info["image"])) if prototypes is None else np.asarray(prototypes)
  rows = -(-len(protos) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(columns * ax_size, rows * ax_size),
                           squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, j in zip(axes.flat, protos):
    ax.imshow(np.asarray(images[push_info["image"][j]]))
    if "box" in push_info:
      y0, y1, x0, x1 = push_info["box"][j]
      ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                             edgecolor="yellow", linewidth=1.5))
    ax.set_title(f"p{j}", fontsize=8)
  fig.tight_layout()
  return fig


def plot_activation(image, activation_map, *, ax=None, alpha: float = 0.5):
  """An image with a prototype's upsampled activation map as a heat map on top."""
  import matplotlib.pyplot as plt
  if ax is None:
    _, ax = plt.subplots(figsize=(3, 3))
  up = np.asarray(upsample_bicubic(jnp.asarray(activation_map), image.shape[:2]))
  ax.imshow(np.asarray(image))
  ax.imshow(up, cmap="jet", alpha=alpha)
  ax.axis("off")
  return ax
