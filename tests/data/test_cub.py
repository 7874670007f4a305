"""CUB-200-2011 loader on a tiny folder in the standard layout, written by the test."""

import numpy as np
import pytest
from PIL import Image

from jaxdl import data as jdata
from jaxdl import errors
from jaxdl.data import cub


@pytest.fixture
def tiny_cub(tmp_path):
  root = tmp_path / "CUB_200_2011"
  (root / "parts").mkdir(parents=True)
  files = ["001.Black_footed_Albatross/a.jpg", "002.Laysan_Albatross/b.jpg",
           "002.Laysan_Albatross/c.jpg"]
  for i, f in enumerate(files):
    (root / "images" / f).parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((100, 200, 3), np.uint8)
    img[20:60, 50:130] = 200 + 20 * i  # the "bird" inside its bounding box
    Image.fromarray(img).save(root / "images" / f)
  (root / "images.txt").write_text("".join(f"{i + 1} {f}\n" for i, f in enumerate(files)))
  (root / "image_class_labels.txt").write_text("1 1\n2 2\n3 2\n")
  (root / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n")
  (root / "bounding_boxes.txt").write_text("1 50.0 20.0 80.0 40.0\n2 50.0 20.0 80.0 40.0\n"
                                           "3 50.7 20.2 80.0 40.0\n")
  (root / "parts" / "parts.txt").write_text("1 back\n2 beak\n3 belly\n")
  (root / "parts" / "part_locs.txt").write_text(
      "1 1 90.0 30.0 1\n1 2 0.0 0.0 0\n1 3 50.0 59.0 1\n"
      "2 1 70.0 40.0 1\n2 2 129.0 20.0 1\n2 3 0.0 0.0 0\n"
      "3 1 0.0 0.0 0\n3 2 0.0 0.0 0\n3 3 0.0 0.0 0\n")
  return tmp_path


def test_cub_loader_crops_and_remaps_parts(tiny_cub):
  train = jdata.load("cub200", "train", tiny_cub, image_size=16)
  test = jdata.load("cub200", "test", tiny_cub, image_size=16)
  assert train["inputs"].shape == (2, 16, 16, 3) and test["inputs"].shape == (1, 16, 16, 3)
  np.testing.assert_array_equal(train["targets"], [0, 1])
  np.testing.assert_array_equal(test["targets"], [1])
  # Crop = the bird box only: the whole crop is the bright square.
  assert train["inputs"][0].min() >= 190
  # part (90, 30) in box x 50..130, y 20..60 -> int(16 * 40/80), int(16 * 10/40) = (8, 4)
  np.testing.assert_array_equal(train["parts"][0, 0], [8, 4])
  assert np.isnan(train["parts"][0, 1]).all()  # not visible
  np.testing.assert_array_equal(train["parts"][0, 2], [0, 15])
  np.testing.assert_array_equal(test["parts"][0, 1], [15, 0])
  assert np.isnan(train["parts"][1]).all()  # image 3: no visible part
  assert jdata.get_info("cub200", image_size=16).input_shape == (16, 16, 3)


def test_cub_missing_folder_says_how_to_get_it(tmp_path, monkeypatch):
  monkeypatch.delenv("JAXDL_DATA_DIR", raising=False)
  with pytest.raises(errors.DataNotFoundError, match="CUB_200_2011"):
    jdata.load("cub200", "test", tmp_path)
