"""Input checks shared by the image classifiers of the model zoo."""

from __future__ import annotations

import jax

from jaxdl import errors


def check_images(model: str, x: jax.Array) -> None:
  """Raises a one-line `ShapeError` unless `x` is an NHWC image batch [N, H, W, C].

  A PyTorch-layout batch [N, C, H, W] (1 or 3 in axis 1, neither in the last axis) gets a
  hint to transpose it instead of silently running as a 3-pixel-high image.
  """
  shape = tuple(x.shape)
  if len(shape) != 4:
    raise errors.ShapeError(f"{model} takes NHWC images [N, H, W, C], got shape {shape}; "
                            f"add a batch axis with x[None] for a single image.")
  if shape[1] in (1, 3) and shape[3] not in (1, 3):
    raise errors.ShapeError(f"{model} takes NHWC images [N, H, W, C], got shape {shape}, "
                            f"which looks like PyTorch's NCHW; use x.transpose(0, 2, 3, 1).")
