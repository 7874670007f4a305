"""Heat-map overlays: the blend formula and PNG files."""

import numpy as np
import pytest

from jaxdl import errors
from jaxdl.analysis import cam_overlay

matplotlib = pytest.importorskip("matplotlib")


def test_overlay_blend_and_png(tmp_path):
  from matplotlib import colormaps, image as mpimg
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
  cam = rng.uniform(size=(6, 5))
  out = cam_overlay.save_overlay(tmp_path / "o.png", img, cam, image_weight=0.3)
  blend = 0.7 * colormaps["jet"](cam)[..., :3] + 0.3 * img / 255.0
  np.testing.assert_array_equal(out, np.uint8(255 * blend / blend.max()))
  back = mpimg.imread(tmp_path / "o.png")
  assert back.shape[:2] == (6, 5)
  np.testing.assert_array_equal(np.uint8(np.round(back[..., :3] * 255)), out)
  fig = cam_overlay.save_grid(tmp_path / "g.png", img[None].repeat(2, 0),
                              {"a": [cam, cam], "b": [cam, 1 - cam]}, titles=["x", "y"])
  assert (tmp_path / "g.png").stat().st_size > 0 and len(fig.axes) == 6
  with pytest.raises(errors.ShapeError, match="cam must be"):
    cam_overlay.overlay(img, cam.T)
  with pytest.raises(errors.ConfigError, match="undo the normalization"):
    cam_overlay.overlay(img.astype(np.float32), cam)
