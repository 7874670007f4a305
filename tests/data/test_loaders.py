"""Dataset loaders: offline files, scikit-learn digits, TFDS via data_source (mock data)."""

import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxdl.data as jdata
from jaxdl import errors
from jaxdl.data.offline import UCI_DATASETS, uci_num_splits


def test_registry_lists_offline_datasets():
  assert {"digits", "mnist", "cifar10", "uci", "openml_cc18"} <= set(jdata.list_datasets())


def test_digits_split_is_fixed_disjoint_and_stratified():
  train, test = jdata.load("digits", "train"), jdata.load("digits", "test")
  info = jdata.get_info("digits")
  assert train["inputs"].shape[1:] == info.input_shape == (8, 8, 1)
  assert len(train["targets"]) + len(test["targets"]) == 1797
  assert train["inputs"].dtype == np.uint8 and train["inputs"].max() == 16
  # Stratified: every class has 19-21% of its examples in test.
  frac = np.bincount(test["targets"]) / (np.bincount(test["targets"]) +
                                         np.bincount(train["targets"]))
  assert np.all((frac > 0.19) & (frac < 0.21))
  # Disjoint: no image appears in both splits with the same label more often than duplicates
  # in the original data allow (digits has none across our split by construction).
  keys = {(t, x.tobytes()) for x, t in zip(train["inputs"], train["targets"])}
  assert sum((t, x.tobytes()) in keys for x, t in zip(test["inputs"], test["targets"])) == 0
  np.testing.assert_array_equal(jdata.load("digits", "test")["targets"], test["targets"])


def test_mnist_test_set(data_dir):
  d = jdata.load("mnist", "test")
  assert d["inputs"].shape == (10000, 28, 28, 1) and d["inputs"].dtype == np.uint8
  assert np.bincount(d["targets"]).tolist()[:3] == [980, 1135, 1032]  # LeCun's test counts.


def test_mnist_train_missing_offline_names_the_fix(data_dir):
  with pytest.raises(errors.DataNotFoundError) as e:
    jdata.load("mnist", "train")
  msg = str(e.value)
  assert "\n" not in msg and "tfds:mnist" in msg and "JAXDL_DATA_DIR" in msg


def test_cifar10_test_split(data_dir):
  d = jdata.load("cifar10", "test")
  assert d["inputs"].shape == (10000, 32, 32, 3) and d["inputs"].dtype == np.uint8
  assert np.bincount(d["targets"]).tolist() == [1000] * 10
  mean = d["inputs"].reshape(-1, 3).mean(0)
  np.testing.assert_allclose(mean, jdata.get_info("cifar10").mean, atol=3.0)


@pytest.mark.parametrize("name", UCI_DATASETS)
def test_uci_standard_splits(data_dir, name):
  n_splits = uci_num_splits(name)
  assert n_splits == (5 if name == "protein-tertiary-structure" else 20)
  train = jdata.load("uci", "train", dataset=name, split_index=n_splits - 1)
  test = jdata.load("uci", "test", dataset=name, split_index=n_splits - 1)
  assert train["inputs"].dtype == np.float64 and train["inputs"].ndim == 2
  assert train["inputs"].shape[1] == test["inputs"].shape[1]
  assert train["targets"].shape == (train["inputs"].shape[0],)
  # The standard splits hold out about 10% of the rows.
  frac = len(test["targets"]) / (len(test["targets"]) + len(train["targets"]))
  assert 0.08 < frac < 0.12


def test_uci_bad_arguments_give_one_line_errors(data_dir):
  with pytest.raises(errors.ConfigError, match="splits 0..19"):
    jdata.load("uci", "train", dataset="bostonHousing", split_index=20)
  with pytest.raises(errors.UnknownNameError, match="Did you mean 'bostonHousing'"):
    jdata.load("uci", "train", dataset="bostonhousing")


def test_openml_tables(data_dir):
  from jaxdl.data.offline import openml_tables
  tables = openml_tables()
  assert len(tables) == 30 and "credit-g" in tables
  d = jdata.load("openml_cc18", "all", table="credit-g")
  assert d["inputs"].shape == (1000, 20) and d["inputs"].dtype == np.float32
  assert sorted(np.bincount(d["targets"]).tolist()) == [300, 700]


def test_missing_data_dir_error_says_where_it_looked(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXDL_DATA_DIR", str(tmp_path))
  with pytest.raises(errors.DataNotFoundError) as e:
    jdata.load("cifar10", "train")
  msg = str(e.value)
  assert str(tmp_path) in msg and "\n" not in msg and "tfds:cifar10" in msg


def test_unknown_dataset_and_split():
  with pytest.raises(errors.UnknownNameError, match="Did you mean 'cifar10'"):
    jdata.load("cifar-10", "train")
  with pytest.raises(errors.ConfigError, match="no split 'validation'"):
    jdata.load("digits", "validation")
  with pytest.raises(errors.ConfigError, match="takes no options"):
    jdata.load("digits", "train", dataset="x")


@settings(max_examples=40, deadline=None)
@given(split=st.text(min_size=0, max_size=12))
def test_loader_split_argument_property(split):
  """Any split string is either a real split or a one-line ConfigError naming the splits."""
  if split in ("train", "test"):
    assert len(jdata.load("digits", split)["targets"]) > 0
  else:
    with pytest.raises(errors.ConfigError) as e:
      jdata.load("digits", split)
    assert "train, test" in str(e.value) and "\n" not in str(e.value)


@settings(max_examples=25, deadline=None)
@given(index=st.integers(min_value=-5, max_value=30))
def test_loader_uci_split_index_property(index):
  if not os.path.isdir(os.environ.get("JAXDL_DATA_DIR", "")):
    pytest.skip("offline data not found")
  if 0 <= index < 20:
    d = jdata.load("uci", "test", dataset="yacht", split_index=index)
    assert d["inputs"].shape[1] == 6
  else:
    with pytest.raises(errors.ConfigError):
      jdata.load("uci", "test", dataset="yacht", split_index=index)


def test_tfds_data_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=24):
    info = jdata.get_info("tfds:mnist")
    assert info.num_classes == 10 and info.input_shape == (28, 28, 1)
    source = jdata.load("tfds:mnist", "train")
    assert len(source) == 24
    from jaxdl.data.pipeline import TrainPipeline
    batch = TrainPipeline(source, global_batch_size=8, seed=0).batch(2)
    assert batch["inputs"].shape == (8, 28, 28, 1) and batch["targets"].shape == (8,)
