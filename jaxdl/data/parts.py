"""A part-annotated image dataset of our own making, for measuring prototype
interpretability end to end on CPU (CUB-200-2011 is not available offline).

"mnist_parts": each class is an object made of 3 parts, and a part is a digit type (part k =
"the digit k", so there are K = 10 part kinds shared between classes, as CUB's 15 bird parts
are shared between species). A class fixes which 3 digits it is made of and where each sits
on a 3x3 layout grid of cell `digit_size`; an image of the class pastes random MNIST
instances of those digits (train and test use disjoint MNIST images: the first 8,000 and the
last 2,000 of the MNIST test set, the only MNIST images available offline) at their layout
cells, with a random translation of the whole object, a small jitter per part, a random
digit colour and a noisy background. The keypoint of part k is the centre of its digit; the
parts a class does not have are NaN, like CUB's invisible parts. Classes share digits, so a
classifier must look at which digits appear where, and a prototype is consistent when it
keeps firing on the same digit.

  data = jaxdl.data.load("mnist_parts", "train")
  data["inputs"]: uint8 [N, 64, 64, 3], data["targets"]: [N], data["parts"]: [N, 10, 2] (x, y)

With image_size 64 the EvalProtoPNet box half-size 36 (for 224-pixel images) scales to 10.
"""

from __future__ import annotations

import functools
import gzip

import numpy as np
from PIL import Image

from jaxdl import errors
from jaxdl.data.registry import DatasetInfo, find_file, register

NUM_PARTS = 10
PARTS_PER_CLASS = 3
_MNIST_HOW_TO_GET = ("it is the MNIST test set in IDX format (LeCun's t10k-images-idx3-ubyte.gz)"
                     "; ../shared/data/mnist holds it.")
_TRAIN_POOL = slice(0, 8000)
_TEST_POOL = slice(8000, 10000)


def _read_idx(path) -> np.ndarray:
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@functools.lru_cache(maxsize=4)
def mnist_test_digits(data_dir=None):
  """The 10,000 MNIST test images [N, 28, 28] uint8 and labels [N] (read once)."""
  images = _read_idx(find_file("mnist/t10k-images-idx3-ubyte.gz", data_dir,
                               how_to_get=_MNIST_HOW_TO_GET))
  labels = _read_idx(find_file("mnist/t10k-labels-idx1-ubyte.gz", data_dir,
                               how_to_get=_MNIST_HOW_TO_GET))
  return images, labels


def class_templates(num_classes: int, seed: int = 0) -> np.ndarray:
  """[C, 3, 3] int: per class, its parts as (digit, layout row, layout col), all distinct."""
  rng = np.random.default_rng(seed)
  seen, out = set(), []
  while len(out) < num_classes:
    digits = rng.choice(NUM_PARTS, PARTS_PER_CLASS, replace=False)
    cells = rng.choice(9, PARTS_PER_CLASS, replace=False)
    key = tuple(sorted(zip(digits.tolist(), cells.tolist())))
    if key in seen:
      continue
    seen.add(key)
    out.append(np.stack([digits, cells // 3, cells % 3], axis=1))
  return np.stack(out)


def compose(digit_images, digit_labels, templates, labels, *, image_size: int = 64,
            digit_size: int = 16, jitter: int = 2, seed: int = 0):
  """Renders one image per label; returns (images uint8 [N, S, S, 3], parts [N, K, 2])."""
  rng = np.random.default_rng(seed)
  n = len(labels)
  by_digit = [np.nonzero(digit_labels == k)[0] for k in range(NUM_PARTS)]

  @functools.lru_cache(maxsize=None)
  def small(i):  # resized on first use: small datasets do not resize the whole pool
    d = Image.fromarray(digit_images[i]).resize((digit_size, digit_size), Image.BILINEAR)
    return np.asarray(d, np.float32) / 255.0

  obj = 3 * digit_size  # the 3x3 layout grid
  margin = image_size - obj - 2 * jitter
  if margin < 0:
    raise errors.ConfigError(
        f"image_size={image_size} is too small for 3x3 digits of size {digit_size}; use "
        f"image_size >= {obj + 2 * jitter}")
  images = rng.uniform(0, 60, size=(n, image_size, image_size, 3)).astype(np.float32)
  parts = np.full((n, NUM_PARTS, 2), np.nan, np.float32)
  for i, c in enumerate(labels):
    ox, oy = rng.integers(0, margin + 1, size=2) + jitter
    colour = rng.uniform(160, 255, size=3)
    for digit, row, col in templates[c]:
      jx, jy = rng.integers(-jitter, jitter + 1, size=2)
      x, y = ox + col * digit_size + jx, oy + row * digit_size + jy
      d = small(int(rng.choice(by_digit[digit])))[..., None] * colour
      patch = images[i, y:y + digit_size, x:x + digit_size]
      images[i, y:y + digit_size, x:x + digit_size] = np.maximum(patch, d)
      parts[i, digit] = (x + digit_size / 2, y + digit_size / 2)
  return np.clip(images, 0, 255).astype(np.uint8), parts


def parts_info(num_classes: int = 10, image_size: int = 64, **unused) -> DatasetInfo:
  del unused
  return DatasetInfo(
      name="mnist_parts", task="classification", num_classes=num_classes,
      input_shape=(image_size, image_size, 3), splits=("train", "test"),
      mean=(60.0, 60.0, 60.0), std=(70.0, 70.0, 70.0), augment=None,
      source="composed from MNIST test digits (jaxdl.data.parts)")


@register("mnist_parts", parts_info)
def load_mnist_parts(split, data_dir=None, *, num_classes: int = 10, image_size: int = 64,
                     digit_size: int = 16, num_examples: int | None = None, seed: int = 0):
  """Split "train" (default 5,000 images) or "test" (default 1,000) of mnist_parts.

  The class layouts depend on `seed` only; images on (seed, split).
  """
  digits, digit_labels = mnist_test_digits(data_dir)
  pool = _TRAIN_POOL if split == "train" else _TEST_POOL
  n = num_examples or (5000 if split == "train" else 1000)
  rng = np.random.default_rng([seed, 0 if split == "train" else 1])
  labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
  templates = class_templates(num_classes, seed)
  images, parts = compose(digits[pool], digit_labels[pool], templates, labels,
                          image_size=image_size, digit_size=digit_size,
                          seed=int(rng.integers(2**31)))
  return {"inputs": images, "targets": labels, "parts": parts}
