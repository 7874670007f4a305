"""Datasets of the grokking experiments.

  mnist_grok        MNIST with a small training set: `num_train` (1000) images drawn (seeded)
                    from the 10,000 offline MNIST test images, the other 9,000 as the test
                    split. Scaled to [0, 1] on the device (mean 0, std 255), like the reference's
                    ToTensor, so local-complexity radii mean the same as in the paper.
  modular_addition  all pairs (a, b) in Z_p x Z_p with label (a + b) mod p (p = 97), inputs the
                    concatenated one-hot codes of a and b (2p values), split at random into
                    `train_fraction` for training and the rest for testing.

Humayun et al., "Deep Networks Always Grok and Here is Why" (ICML 2024) train on 1000 MNIST
images (after Liu et al., "Omnigrok", ICLR 2023); modular addition is the algorithmic task of
Power et al., "Grokking" (2022). Offline only the MNIST test set exists (shared/data/mnist), so
the training subset is drawn from it and the test split is the rest.
"""

from __future__ import annotations

import functools

import numpy as np

from jaxdl import errors
from jaxdl.data.registry import DatasetInfo, load, register

def _mnist_grok_info(num_train=1000, seed=0):
  del num_train, seed  # Options of the loader; the info is the same for all.
  return DatasetInfo(
      name="mnist_grok", task="classification", num_classes=10, input_shape=(28, 28, 1),
      splits=("train", "test"), mean=(0.0,), std=(255.0,),
      source="the offline MNIST test set (shared/data/mnist), split into a small training "
             "set and the rest")


@register("mnist_grok", _mnist_grok_info)
def load_mnist_grok(split, data_dir=None, num_train=1000, seed=0):
  """`num_train` MNIST test images for training, the others for testing (uint8 NHWC)."""
  full = load("mnist", "test", data_dir)
  n = len(full["targets"])
  if not 0 < num_train < n:
    raise errors.ConfigError(
        f"mnist_grok num_train={num_train} must be between 1 and {n - 1}; the offline MNIST "
        f"test set has {n} images.")
  perm = np.random.default_rng(seed).permutation(n)
  idx = np.sort(perm[:num_train] if split == "train" else perm[num_train:])
  return {"inputs": full["inputs"][idx], "targets": full["targets"][idx].astype(np.int32)}


def _modular_info(modulus=97, train_fraction=0.3, seed=0):
  del train_fraction, seed
  return DatasetInfo(
      name="modular_addition", task="classification", num_classes=int(modulus),
      input_shape=(2 * int(modulus),), splits=("train", "test"),
      source="generated: (a + b) mod p over all pairs, one-hot inputs")


@functools.lru_cache(maxsize=8)
def _modular_split(modulus, train_fraction, seed):
  if int(modulus) < 2:
    raise errors.ConfigError(f"modulus={modulus} must be >= 2 (the paper's task uses 97).")
  if not 0 < train_fraction < 1:
    raise errors.ConfigError(
        f"train_fraction={train_fraction} must be in (0, 1); e.g. 0.3 of the p^2 pairs.")
  p = int(modulus)
  a, b = np.divmod(np.arange(p * p), p)
  inputs = np.zeros((p * p, 2 * p), np.uint8)
  inputs[np.arange(p * p), a] = 1
  inputs[np.arange(p * p), p + b] = 1
  targets = ((a + b) % p).astype(np.int32)
  perm = np.random.default_rng(seed).permutation(p * p)
  n_train = int(round(train_fraction * p * p))
  out = {}
  for split, idx in (("train", np.sort(perm[:n_train])), ("test", np.sort(perm[n_train:]))):
    out[split] = {"inputs": inputs[idx], "targets": targets[idx]}
  return out


@register("modular_addition", _modular_info)
def load_modular_addition(split, data_dir=None, modulus=97, train_fraction=0.3, seed=0):
  """One-hot pairs [N, 2p] uint8 (0/1) and labels (a + b) mod p."""
  del data_dir
  return {k: v.copy() for k, v in _modular_split(int(modulus), float(train_fraction),
                                                  int(seed))[split].items()}
