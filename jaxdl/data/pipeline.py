"""Deterministic, resumable input pipeline with per-host sharding.

The batch for training step `s` is a pure function of (seed, s): the example stream is the
concatenation of per-epoch permutations (epoch e shuffled with seed (seed, e)), and step s
takes stream positions [s*B, (s+1)*B) for the global batch size B. A restarted run therefore
resumes at any step without saving iterator state, and a run on P hosts sees exactly the
same global batches as a run on one host: host p takes rows [p*B/P, (p+1)*B/P) of the global
batch, and `jax.make_array_from_process_local_data` reassembles them in process order.
Augmentation randomness is drawn for the whole global batch from (seed, s) and sliced the same
way.

Sources: a dict of numpy arrays (gathered with fancy indexing), any random-access source
(`len`, `__getitem__`, optionally `__getitems__`: TFDS `data_source`, Grain
`RandomAccessDataSource`), or a synthetic source with `get_batch(step, batch_size)`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from jaxdl import errors

Batch = dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------
# Augmentations: draw(rng, batch_size, input_shape) -> params; apply(inputs, params) -> inputs.

@dataclasses.dataclass(frozen=True)
class Augmentation:
  draw: Callable[[np.random.Generator, int, tuple], Any]
  apply: Callable[[np.ndarray, Any], np.ndarray]


def _draw_crop_flip(rng, n, shape, pad=4):
  return {"dy": rng.integers(0, 2 * pad + 1, n), "dx": rng.integers(0, 2 * pad + 1, n),
          "flip": rng.random(n) < 0.5}


def _apply_crop_flip(x, p, pad=4):
  """Random crop with 4-pixel zero padding and horizontal flip (He et al. 2016)."""
  h, w = x.shape[1:3]
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = np.empty_like(x)
  for i in range(x.shape[0]):
    crop = padded[i, p["dy"][i]:p["dy"][i] + h, p["dx"][i]:p["dx"][i] + w]
    out[i] = crop[:, ::-1] if p["flip"][i] else crop
  return out


def _draw_flip(rng, n, shape):
  return {"flip": rng.random(n) < 0.5}


def _apply_flip(x, p):
  return np.where(p["flip"][:, None, None, None], x[:, :, ::-1], x)


AUGMENTATIONS: dict[str, Augmentation] = {
    "crop_flip": Augmentation(_draw_crop_flip, _apply_crop_flip),
    "flip": Augmentation(_draw_flip, _apply_flip),
}


def get_augmentation(name: str | None) -> Augmentation | None:
  if not name or name == "none":
    return None
  if name not in AUGMENTATIONS:
    raise errors.unknown_name("augmentation", name, list(AUGMENTATIONS) + ["none"])
  return AUGMENTATIONS[name]


def _slice_tree(tree, lo, hi):
  if isinstance(tree, Mapping):
    return {k: _slice_tree(v, lo, hi) for k, v in tree.items()}
  return tree[lo:hi]


# ---------------------------------------------------------------------------------------------
# Sources.

def source_length(source) -> int | None:
  if isinstance(source, Mapping):
    return len(next(iter(source.values())))
  try:
    return len(source)
  except TypeError:
    return None


def gather(source, indices: np.ndarray) -> Batch:
  """Rows `indices` of a source, stacked into a batch."""
  if isinstance(source, Mapping):
    return {k: v[indices] for k, v in source.items()}
  if hasattr(source, "__getitems__"):
    examples = source.__getitems__(list(indices))
  else:
    examples = [source[int(i)] for i in indices]
  return {k: np.stack([np.asarray(ex[k]) for ex in examples]) for k in examples[0]}


class TrainPipeline:
  """Batches for training steps, deterministic in (seed, step), this host's part.

  Args:
    source: dict of arrays, random-access source, or synthetic source (`get_batch`).
    global_batch_size: examples per step over all hosts (divisible by `process_count`).
    seed: shuffling and augmentation seed.
    augment: name of an augmentation in AUGMENTATIONS (or None).
    shuffle: permute each epoch (else the stream is 0, 1, ..., n-1, 0, 1, ...).
    process_index, process_count: this host and the number of hosts.
  """

  def __init__(self, source, *, global_batch_size: int, seed: int, augment: str | None = None,
               shuffle: bool = True, process_index: int = 0, process_count: int = 1):
    if global_batch_size % process_count:
      raise errors.ConfigError(
          f"batch_size={global_batch_size} is not divisible by the {process_count} hosts; "
          "use a multiple of the number of hosts.")
    self.source = source
    self.batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.seed = int(seed)
    self.shuffle = shuffle
    self.augmentation = get_augmentation(augment)
    self.process_index, self.process_count = process_index, process_count
    self.synthetic = hasattr(source, "get_batch")
    self.num_examples = source_length(source)
    if not self.synthetic and not self.num_examples:
      raise errors.ConfigError("the training dataset is empty; check the dataset and split.")
    self._perms: dict[int, np.ndarray] = {}

  @property
  def steps_per_epoch(self) -> float | None:
    return None if self.num_examples is None else self.num_examples / self.batch_size

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) > 2:
        self._perms.pop(min(self._perms))
      n = self.num_examples
      self._perms[epoch] = (np.random.default_rng([self.seed, epoch]).permutation(n)
                            if self.shuffle else np.arange(n))
    return self._perms[epoch]

  def indices(self, step: int) -> np.ndarray:
    """Indices into the source of this host's examples for `step`."""
    lo = self.process_index * self.local_batch_size
    pos = step * self.batch_size + lo + np.arange(self.local_batch_size)
    epochs, offsets = np.divmod(pos, self.num_examples)
    out = np.empty_like(pos)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self._permutation(int(e))[offsets[sel]]
    return out

  def batch(self, step: int) -> Batch:
    lo = self.process_index * self.local_batch_size
    hi = lo + self.local_batch_size
    if self.synthetic:
      return _slice_tree(self.source.get_batch(step, self.batch_size), lo, hi)
    batch = gather(self.source, self.indices(step))
    if self.augmentation is not None:
      rng = np.random.default_rng([self.seed, 1, step])
      shape = batch["inputs"].shape[1:]
      params = _slice_tree(self.augmentation.draw(rng, self.batch_size, shape), lo, hi)
      batch["inputs"] = self.augmentation.apply(batch["inputs"], params)
    return batch

  def iterate(self, start_step: int, end_step: int, prefetch: int = 2) -> Iterator[Batch]:
    """Batches for steps start_step..end_step-1, prepared `prefetch` steps ahead in a thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      futures = [pool.submit(self.batch, s)
                 for s in range(start_step, min(end_step, start_step + prefetch))]
      for step in range(start_step, end_step):
        nxt = step + len(futures)
        batch = futures.pop(0).result()
        if nxt < end_step:
          futures.append(pool.submit(self.batch, nxt))
        yield batch


def eval_batches(source, global_batch_size: int, *, process_index: int = 0,
                 process_count: int = 1) -> Iterator[Batch]:
  """The whole source once, in order, in global batches padded to full size.

  Each batch has a float "mask" (1 for real examples, 0 for padding) so metrics average over
  exactly the real examples. Yields this host's rows of each global batch.
  """
  n = source_length(source)
  local = global_batch_size // process_count
  lo = process_index * local
  for start in range(0, n, global_batch_size):
    idx = np.arange(start, start + global_batch_size)[lo:lo + local]
    real = idx < n
    batch = gather(source, np.where(real, idx, 0))
    batch["mask"] = real.astype(np.float32)
    yield batch


def num_eval_batches(source, global_batch_size: int) -> int:
  return math.ceil(source_length(source) / global_batch_size)
