"""Datasets of the grokking configs: the 1000-image MNIST subset and modular addition."""

import numpy as np
import pytest

import jaxdl.data as jdata
from jaxdl import errors


def test_mnist_grok_splits_partition_the_test_set(data_dir):
  full = jdata.load("mnist", "test", data_dir)
  train = jdata.load("mnist_grok", "train", data_dir)
  test = jdata.load("mnist_grok", "test", data_dir)
  assert train["inputs"].shape == (1000, 28, 28, 1) and train["inputs"].dtype == np.uint8
  assert test["inputs"].shape == (9000, 28, 28, 1)
  # Together they are the whole offline set, each image once.
  rows = lambda a: {r.tobytes() + bytes([t]) for r, t in zip(a["inputs"], a["targets"])}
  assert rows(train) | rows(test) == rows(full)
  assert not rows(train) & rows(test)
  assert len(np.unique(train["targets"])) == 10
  # Seeded: the same draw each time, another with another seed.
  again = jdata.load("mnist_grok", "train", data_dir)
  np.testing.assert_array_equal(again["inputs"], train["inputs"])
  other = jdata.load("mnist_grok", "train", data_dir, seed=1)
  assert rows(other) != rows(train)
  info = jdata.get_info("mnist_grok")
  assert info.mean == (0.0,) and info.std == (255.0,)  # Inputs in [0, 1], as ToTensor.


def test_mnist_grok_bad_size(data_dir):
  with pytest.raises(errors.ConfigError, match="num_train"):
    jdata.load("mnist_grok", "train", data_dir, num_train=10_000)


def test_modular_addition():
  p = 97
  train = jdata.load("modular_addition", "train")
  test = jdata.load("modular_addition", "test")
  assert len(train["targets"]) == round(0.3 * p * p)
  assert len(train["targets"]) + len(test["targets"]) == p * p
  for split in (train, test):
    x = split["inputs"]
    assert x.shape[1] == 2 * p and np.all(x.sum(1) == 2)
    a, b = x[:, :p].argmax(1), x[:, p:].argmax(1)
    np.testing.assert_array_equal(split["targets"], (a + b) % p)
  pairs = lambda s: set(map(tuple, np.stack([s["inputs"][:, :p].argmax(1),
                                             s["inputs"][:, p:].argmax(1)], 1)))
  assert not pairs(train) & pairs(test)
  assert len(pairs(train) | pairs(test)) == p * p
  info = jdata.get_info("modular_addition", modulus=11)
  assert info.num_classes == 11 and info.input_shape == (22,)
  small = jdata.load("modular_addition", "train", modulus=11, train_fraction=0.5)
  assert small["inputs"].shape == (60, 22)  # round(0.5 * 121) = 60 (banker's rounding).
  with pytest.raises(errors.ConfigError, match="train_fraction"):
    jdata.load("modular_addition", "train", train_fraction=1.5)
