"""CUB-200-2011 (Wah et al. 2011) with part keypoints, as part-prototype networks use it.

Reads the standard folder layout (`CUB_200_2011/`): images.txt, image_class_labels.txt,
train_test_split.txt, bounding_boxes.txt, parts/parts.txt, parts/part_locs.txt and
images/<class folder>/<file>.jpg. As in ProtoPNet and EvalProtoPNet (`util/crop_cub_data.py`,
`util/local_parts.py`), each image is cropped to its bird bounding box (coordinates truncated
to integers) and resized to `image_size`; the visible part keypoints are remapped into the
cropped, resized image as int(image_size * (loc - bbox_start) / bbox_extent), NaN where a part
is not visible.

  data = jaxdl.data.load("cub200", "test", data_dir)  # data_dir holds CUB_200_2011/
  data["inputs"]: uint8 [N, 224, 224, 3], data["targets"]: [N] (0..199),
  data["parts"]: float32 [N, 15, 2] (x, y) pixel keypoints, NaN if not visible.

CUB is not in the offline data; get it from https://www.vision.caltech.edu/datasets/cub_200_2011/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from jaxdl.data.registry import DatasetInfo, find_file, register

HOW_TO_GET = ("download CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/"
              "cub_200_2011/ and extract it there.")
NUM_PARTS = 15


def _read_table(path: Path) -> list[list[str]]:
  with open(path) as f:
    return [line.split() for line in f if line.strip()]


def read_annotations(root: Path) -> dict:
  """Per image id: path, label (0-based), is_train, bbox (x1, y1, x2, y2) and visible parts."""
  root = Path(root)
  paths = {int(r[0]): r[1] for r in _read_table(root / "images.txt")}
  labels = {int(r[0]): int(r[1]) - 1 for r in _read_table(root / "image_class_labels.txt")}
  train = {int(r[0]): int(r[1]) for r in _read_table(root / "train_test_split.txt")}
  boxes = {}
  for r in _read_table(root / "bounding_boxes.txt"):
    # The reference truncates the float coordinates: int("60.0".split(".")[0]).
    x, y, w, h = (int(v.split(".")[0]) for v in r[1:5])
    boxes[int(r[0])] = (x, y, x + w, y + h)
  parts: dict[int, list] = {i: [] for i in paths}
  for r in _read_table(root / "parts" / "part_locs.txt"):
    if int(r[4]) == 1:
      parts[int(r[0])].append((int(r[1]) - 1, int(float(r[2])), int(float(r[3]))))
  num_parts = len(_read_table(root / "parts" / "parts.txt"))
  return dict(paths=paths, labels=labels, train=train, boxes=boxes, parts=parts,
              num_parts=num_parts)


def remap_parts(parts, box, image_size: int, num_parts: int) -> np.ndarray:
  """[K, 2] keypoints inside the bbox-cropped image resized to image_size; NaN if absent."""
  out = np.full((num_parts, 2), np.nan, np.float32)
  x1, y1, x2, y2 = box
  for k, lx, ly in parts:
    out[k] = (int(image_size * (lx - x1) / (x2 - x1)), int(image_size * (ly - y1) / (y2 - y1)))
  return out


def load_cub_folder(root, split: str, *, image_size: int = 224, crop: bool = True,
                    limit: int | None = None) -> dict:
  """Loads split "train" or "test" from a CUB_200_2011 folder (see module docstring)."""
  ann = read_annotations(Path(root))
  want = 1 if split == "train" else 0
  ids = [i for i in sorted(ann["paths"]) if ann["train"][i] == want][:limit]
  inputs = np.zeros((len(ids), image_size, image_size, 3), np.uint8)
  parts = np.zeros((len(ids), ann["num_parts"], 2), np.float32)
  for n, i in enumerate(ids):
    img = Image.open(Path(root) / "images" / ann["paths"][i]).convert("RGB")
    box = ann["boxes"][i] if crop else (0, 0, img.width, img.height)
    if crop:
      img = img.crop(box)
    inputs[n] = np.asarray(img.resize((image_size, image_size), Image.BILINEAR))
    parts[n] = remap_parts(ann["parts"][i], box, image_size, ann["num_parts"])
  return {"inputs": inputs, "targets": np.array([ann["labels"][i] for i in ids], np.int32),
          "parts": parts}


def cub_info(image_size: int = 224, **unused) -> DatasetInfo:
  del unused
  return DatasetInfo(
      name="cub200", task="classification", num_classes=200,
      input_shape=(image_size, image_size, 3), splits=("train", "test"),
      mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),  # ImageNet statistics, as the reference
      std=(0.229 * 255, 0.224 * 255, 0.225 * 255), augment=None,
      source="CUB-200-2011, https://www.vision.caltech.edu/datasets/cub_200_2011/")


@register("cub200", cub_info)
def load_cub(split, data_dir=None, *, image_size: int = 224, crop: bool = True,
             limit: int | None = None):
  root = find_file("CUB_200_2011/images.txt", data_dir, how_to_get=HOW_TO_GET).parent
  return load_cub_folder(root, split, image_size=image_size, crop=crop, limit=limit)
