"""Dataset registry: `load(name, split, data_dir=None)`, `get_info(name)`, `list_datasets()`.

A loader returns either a dict of numpy arrays with the same leading dimension
(`{"inputs": ..., "targets": ...}` plus any extra keys) or a random-access source (`len()` and
`__getitem__(int) -> dict of arrays`, e.g. a `tfds.data_source` or any Grain
`RandomAccessDataSource`). Offline files are looked up in `data_dir`, else `$JAXDL_DATA_DIR`;
a missing file raises `DataNotFoundError` saying where we looked and how to get the data.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
from pathlib import Path
from typing import Any, Callable

from jaxdl import errors


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the training code needs to know about a dataset.

  Attributes:
    task: "classification" or "regression".
    num_classes: number of classes (classification), output dimension (regression).
    input_shape: shape of one example's `inputs` (e.g. (32, 32, 3) or (13,)).
    splits: split names `load` accepts.
    mean, std: per-channel (or per-feature) statistics of the raw inputs used to normalize
      them on the device: x -> (x - mean) / std. None: inputs are used as they are.
    augment: the default augmentation for the training split ("crop_flip", or None).
    source: where the data comes from, shown in error messages.
  """
  name: str
  task: str
  num_classes: int
  input_shape: tuple[int, ...]
  splits: tuple[str, ...]
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  augment: str | None = None
  source: str = ""


_LOADERS: dict[str, tuple[Callable[..., Any], DatasetInfo | Callable[..., DatasetInfo]]] = {}
_DISCOVERED = False


def register(name: str, info: DatasetInfo | Callable[..., DatasetInfo]):
  """Decorator registering `loader(split, data_dir, **kwargs)` under `name`.

  `info` is a DatasetInfo, or a function of the loader's keyword arguments returning one
  (for parametrized datasets such as a UCI set chosen by name).
  """
  def _register(loader):
    _LOADERS[name] = (loader, info)
    return loader
  return _register


def _discover():
  global _DISCOVERED
  if _DISCOVERED:
    return
  _DISCOVERED = True
  import jaxdl.data as pkg
  for mod in pkgutil.iter_modules(pkg.__path__):
    if not mod.name.startswith("_") and mod.name not in ("registry", "pipeline"):
      importlib.import_module(f"jaxdl.data.{mod.name}")


def list_datasets() -> list[str]:
  _discover()
  return sorted(_LOADERS)


def _lookup(name):
  _discover()
  if name in _LOADERS:
    return _LOADERS[name]
  if name.startswith("tfds:"):
    return _LOADERS["tfds:"]
  raise errors.unknown_name("dataset", name, _LOADERS)


def get_info(name: str, **kwargs) -> DatasetInfo:
  """The `DatasetInfo` of dataset `name` (with the loader's keyword arguments, if any)."""
  _, info = _lookup(name)
  if callable(info):
    if name.startswith("tfds:"):
      return info(name=name, **kwargs)
    try:
      return info(**kwargs)
    except TypeError as e:  # An option the dataset does not have.
      raise errors.ConfigError(f"dataset {name!r}: {e}; remove that option.") from None
  if kwargs:
    raise errors.ConfigError(f"dataset {name!r} takes no options, got {sorted(kwargs)}; "
                             "remove them.")
  return info


def load(name: str, split: str, data_dir: str | os.PathLike | None = None, **kwargs):
  """Loads split `split` of dataset `name`: a dict of numpy arrays or a random-access source."""
  loader, _ = _lookup(name)
  info = get_info(name, **kwargs)
  if split not in info.splits:
    raise errors.ConfigError(
        f"dataset {name!r} has no split {split!r}; its splits are: {', '.join(info.splits)}.")
  if name.startswith("tfds:"):
    return loader(split, data_dir, name=name, **kwargs)
  return loader(split, data_dir, **kwargs)


def data_dirs(data_dir=None) -> list[Path]:
  """The folders searched for offline files: `data_dir`, then $JAXDL_DATA_DIR."""
  dirs = []
  if data_dir:
    dirs.append(Path(data_dir).expanduser())
  env = os.environ.get("JAXDL_DATA_DIR")
  if env:
    dirs.append(Path(env).expanduser())
  return dirs


def find_file(relpath: str, data_dir=None, *, how_to_get: str) -> Path:
  """Finds `relpath` under the data folders or raises a one-line `DataNotFoundError`."""
  dirs = data_dirs(data_dir)
  for d in dirs:
    if (d / relpath).exists():
      return d / relpath
  where = ", ".join(str(d / relpath) for d in dirs) or "nowhere (no data_dir given and "\
      "$JAXDL_DATA_DIR is not set)"
  raise errors.DataNotFoundError(
      f"{relpath} not found: looked in {where}. Set JAXDL_DATA_DIR (or --config.dataset."
      f"data_dir) to the folder that holds {relpath}; {how_to_get}")


def cache_dir() -> Path:
  """jaxdl's cache folder ($JAXDL_CACHE_DIR, else ~/.cache/jaxdl): decoded datasets, and
  XLA's compiled steps in its xla/ (`jaxdl.compiler.cache_dir`)."""
  d = Path(os.environ.get("JAXDL_CACHE_DIR") or Path.home() / ".cache" / "jaxdl").expanduser()
  d.mkdir(parents=True, exist_ok=True)
  return d
