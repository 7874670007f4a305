"""TFDS datasets through `tfds.data_source` (array_record, random access, no TensorFlow).

  load("tfds:cifar100", "train", data_dir=...)   # a random-access source of
                                                 # {"inputs": image, "targets": label}

The dataset must already be prepared in `data_dir` (TFDS's `download_and_prepare`, run once
where there is internet). Tests use `tfds.testing.mock_data`.
"""

from __future__ import annotations

from jaxdl import errors
from jaxdl.data.registry import DatasetInfo, data_dirs, register

# Per-channel statistics of common image datasets (raw uint8 units) for normalization.
_STATS = {
    "mnist": ((33.32,), (78.57,)),
    "fashion_mnist": ((72.94,), (90.02,)),
    "cifar10": ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),
    "cifar100": ((129.3, 124.1, 112.4), (68.2, 65.4, 70.4)),
    "imagenet2012": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
}


def _tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise errors.UserError(
        "TFDS datasets need tensorflow-datasets: pip install 'jaxdl[tfds]'.") from e
  return tfds


def _tfds_dir(data_dir):
  dirs = data_dirs(data_dir)
  return str(dirs[0]) if dirs else None


class _Renamed:
  """A random-access source renaming TFDS feature keys to "inputs"/"targets"."""

  def __init__(self, source, input_key, target_key):
    self._source, self._input_key, self._target_key = source, input_key, target_key

  def __len__(self):
    return len(self._source)

  def _rename(self, ex):
    out = {k: v for k, v in ex.items() if k not in (self._input_key, self._target_key)}
    out["inputs"] = ex[self._input_key]
    out["targets"] = ex[self._target_key]
    return out

  def __getitem__(self, index):
    return self._rename(self._source[int(index)])

  def __getitems__(self, indices):
    keys = [int(i) for i in indices]
    try:
      examples = self._source.__getitems__(keys)  # Batched reads from array_record.
    except TypeError:  # tfds.testing.mock_data's source has no batched read.
      examples = [self._source[k] for k in keys]
    return [self._rename(ex) for ex in examples]


def _info(name, data_dir=None, input_key="image", target_key="label"):
  tfds = _tfds()
  short = name.split(":", 1)[1]
  try:
    info = tfds.builder(short, data_dir=_tfds_dir(data_dir)).info
  except Exception as e:  # tfds raises several types for unknown or unprepared datasets.
    raise errors.DataNotFoundError(
        f"TFDS dataset {short!r} is not available ({type(e).__name__}: {str(e).splitlines()[0]}"
        f"); prepare it with tfds.builder({short!r}).download_and_prepare() where there is "
        "internet and point JAXDL_DATA_DIR at that data_dir.") from None
  label = info.features[target_key]
  shape = tuple(info.features[input_key].shape)
  mean, std = _STATS.get(short.split("/")[0], (None, None))
  return DatasetInfo(
      name=name, task="classification" if hasattr(label, "num_classes") else "regression",
      num_classes=int(getattr(label, "num_classes", 1)), input_shape=shape,
      splits=tuple(info.splits.keys()) or ("train", "test", "validation"),
      mean=mean, std=std, augment="crop_flip" if short.startswith("cifar") else None,
      source=f"TFDS {short}")


@register("tfds:", _info)
def load_tfds(split, data_dir=None, name="tfds:mnist", input_key="image", target_key="label"):
  tfds = _tfds()
  short = name.split(":", 1)[1]
  try:
    source = tfds.data_source(short, split=split, data_dir=_tfds_dir(data_dir), download=False)
  except Exception as e:
    raise errors.DataNotFoundError(
        f"TFDS dataset {short!r} split {split!r} is not prepared ({type(e).__name__}); run "
        f"tfds.builder({short!r}).download_and_prepare() where there is internet and point "
        "JAXDL_DATA_DIR at that data_dir.") from None
  return _Renamed(source, input_key, target_key)
