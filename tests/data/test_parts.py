"""mnist_parts: a part-annotated dataset composed from MNIST digits."""

import numpy as np
import pytest

from jaxdl import data as jdata
from jaxdl.data import parts


def test_class_templates_distinct():
  t = parts.class_templates(12, seed=3)
  assert t.shape == (12, 3, 3)
  for c in t:
    assert len(set(c[:, 0])) == 3 and len(set(map(tuple, c[:, 1:]))) == 3
  assert len({tuple(map(tuple, sorted(c.tolist()))) for c in t}) == 12


def test_compose_keypoints_on_digits():
  # Synthetic "digits": a bright square of known size, so the keypoint must be its centre.
  digit = np.zeros((28, 28), np.uint8)
  digit[7:21, 7:21] = 255
  digits = np.stack([digit] * 10)
  templates = parts.class_templates(2, seed=0)
  labels = np.array([0, 1, 1])
  images, locs = parts.compose(digits, np.arange(10), templates, labels, image_size=64,
                               digit_size=16, seed=1)
  assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8
  for i, c in enumerate(labels):
    present = ~np.isnan(locs[i, :, 0])
    assert sorted(np.nonzero(present)[0]) == sorted(templates[c][:, 0])
    for x, y in locs[i, present]:
      assert images[i, int(y), int(x)].min() >= 160  # the digit's colour, not background


@pytest.mark.parametrize("split", ["train", "test"])
def test_loader(data_dir, split):
  d = jdata.load("mnist_parts", split, num_examples=40, num_classes=4)
  assert d["inputs"].shape == (40, 64, 64, 3)
  assert d["parts"].shape == (40, 10, 2)
  np.testing.assert_array_equal(np.bincount(d["targets"]), [10] * 4)
  # every image has exactly its class's 3 parts
  assert (np.sum(~np.isnan(d["parts"][..., 0]), axis=1) == 3).all()
  info = jdata.get_info("mnist_parts", num_classes=4)
  assert info.num_classes == 4 and info.input_shape == (64, 64, 3)


def test_train_and_test_use_different_digits(data_dir):
  a = jdata.load("mnist_parts", "train", num_examples=20)
  b = jdata.load("mnist_parts", "test", num_examples=20)
  assert not np.array_equal(a["inputs"], b["inputs"])
