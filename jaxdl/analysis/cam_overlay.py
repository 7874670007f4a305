"""Heat maps over images, saved as PNG.

`overlay` follows pytorch-grad-cam's `show_cam_on_image` (utils/image.py): the map in [0, 1]
through a colour map (jet), blended with the image as (1 - w) * heat + w * image, divided by
its maximum and stored as uint8. Host-side numpy + matplotlib (imported lazily); nothing here
runs on the device.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from jaxdl import errors


def _as_unit_image(image) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise errors.ShapeError(f"image must be [H, W, 3] (or [H, W, 1]), got {image.shape}.")
  if image.dtype == np.uint8:
    image = image.astype(np.float32) / 255.0
  image = image.astype(np.float32)
  if image.min() < 0.0 or image.max() > 1.0:
    raise errors.ConfigError("image must be uint8 or float in [0, 1]; undo the normalization "
                             "(x * std + mean) / 255 before overlaying.")
  return np.repeat(image, 3, -1) if image.shape[-1] == 1 else image


def heatmap(cam, colormap: str = "jet") -> np.ndarray:
  """[H, W] in [0, 1] -> RGB float32 [H, W, 3] in [0, 1]."""
  from matplotlib import colormaps
  cam = np.clip(np.asarray(cam, np.float32), 0.0, 1.0)
  return colormaps[colormap](cam)[..., :3].astype(np.float32)


def overlay(image, cam, *, image_weight: float = 0.5, colormap: str = "jet") -> np.ndarray:
  """The map as a heat map over the image.

  Args:
    image: [H, W, 3] uint8, or float in [0, 1].
    cam: [H, W] in [0, 1] (a CAM at input resolution).
    image_weight: weight of the image in the blend.

  Returns:
    uint8 [H, W, 3].
  """
  image = _as_unit_image(image)
  cam = np.asarray(cam)
  if cam.shape != image.shape[:2]:
    raise errors.ShapeError(f"cam must be [H, W] = {image.shape[:2]} like the image, got "
                            f"{cam.shape}; CAMs from jaxdl.analysis.cam are at input size.")
  if not 0.0 <= image_weight <= 1.0:
    raise errors.ConfigError(f"image_weight must be in [0, 1], got {image_weight}.")
  out = (1.0 - image_weight) * heatmap(cam, colormap) + image_weight * image
  out = out / max(float(out.max()), 1e-12)
  return np.uint8(255 * out)


def save_overlay(path: str | os.PathLike, image, cam, **kwargs) -> np.ndarray:
  """Writes `overlay(image, cam, **kwargs)` as a PNG; returns the uint8 array."""
  from matplotlib import image as mpimg
  out = overlay(image, cam, **kwargs)
  mpimg.imsave(os.fspath(path), out, format="png")
  return out


def save_grid(path: str | os.PathLike, images, cams: Mapping[str, Sequence], *,
              titles: Sequence[str] | None = None, scale: float = 1.6, **kwargs):
  """One row per image: the image, then its overlay for every method in `cams`.

  Args:
    images: [N, H, W, 3] uint8 or float in [0, 1].
    cams: method name -> [N, H, W] maps.
    titles: optional row labels (e.g. "cat (p=0.81)").

  Returns:
    the matplotlib figure (also written to `path` as PNG).
  """
  import matplotlib.pyplot as plt
  images = np.asarray(images)
  n, cols = len(images), 1 + len(cams)
  fig, axes = plt.subplots(n, cols, figsize=(scale * cols, scale * n), squeeze=False)
  for i in range(n):
    axes[i, 0].imshow(_as_unit_image(images[i]))
    axes[i, 0].set_ylabel(titles[i] if titles else "", fontsize=8)
    for j, (name, maps) in enumerate(cams.items(), start=1):
      axes[i, j].imshow(overlay(images[i], np.asarray(maps[i]), **kwargs))
      if i == 0:
        axes[i, j].set_title(name, fontsize=9)
    for ax in axes[i]:
      ax.set_xticks([]), ax.set_yticks([])
  axes[0, 0].set_title("image", fontsize=9)
  fig.tight_layout()
  fig.savefig(os.fspath(path), format="png", dpi=100)
  return fig
