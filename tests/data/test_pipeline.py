"""The deterministic, resumable, host-sharded input pipeline."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxdl import errors
from jaxdl.data.pipeline import (AUGMENTATIONS, TrainPipeline, eval_batches, get_augmentation)


def _source(n, shape=(4, 4, 1)):
  x = np.arange(n * int(np.prod(shape)), dtype=np.int64).reshape((n,) + shape) % 251
  return {"inputs": x.astype(np.uint8), "targets": np.arange(n)}


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 60), local=st.integers(1, 9), hosts=st.integers(1, 4),
       seed=st.integers(0, 2 ** 31 - 1), step=st.integers(0, 50))
def test_hosts_together_see_exactly_the_single_host_batch(n, local, hosts, seed, step):
  src = _source(n)
  batch_size = local * hosts
  single = TrainPipeline(src, global_batch_size=batch_size, seed=seed).batch(step)
  parts = [TrainPipeline(src, global_batch_size=batch_size, seed=seed, process_index=p,
                         process_count=hosts).batch(step) for p in range(hosts)]
  for key in ("inputs", "targets"):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), single[key])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 50), batch=st.integers(1, 16), seed=st.integers(0, 1000),
       epochs=st.integers(1, 3))
def test_stream_is_a_permutation_per_epoch(n, batch, seed, epochs):
  pipe = TrainPipeline(_source(n), global_batch_size=batch, seed=seed)
  steps = -(-n * epochs // batch)
  stream = np.concatenate([pipe.batch(s)["targets"] for s in range(steps)])[:n * epochs]
  for e in range(epochs):
    assert sorted(stream[e * n:(e + 1) * n].tolist()) == list(range(n))


def test_batches_depend_only_on_seed_and_step():
  src = _source(100)
  a = TrainPipeline(src, global_batch_size=16, seed=3, augment="flip")
  b = TrainPipeline(src, global_batch_size=16, seed=3, augment="flip")
  for step in (7, 0, 31, 7):  # Any order: no iterator state.
    np.testing.assert_array_equal(a.batch(step)["inputs"], b.batch(step)["inputs"])
  c = TrainPipeline(src, global_batch_size=16, seed=4, augment="flip")
  assert not np.array_equal(a.batch(1)["targets"], c.batch(1)["targets"])
  got = list(a.iterate(5, 9))
  assert len(got) == 4
  for i, batch in enumerate(got):
    np.testing.assert_array_equal(batch["inputs"], a.batch(5 + i)["inputs"])


def test_crop_flip_matches_a_direct_crop():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 255, (5, 8, 8, 3)).astype(np.uint8)
  aug = AUGMENTATIONS["crop_flip"]
  params = aug.draw(np.random.default_rng(1), 5, x.shape[1:])
  out = aug.apply(x, params)
  padded = np.zeros((5, 16, 16, 3), np.uint8)
  padded[:, 4:12, 4:12] = x
  for i in range(5):
    dy, dx = params["dy"][i], params["dx"][i]
    ref = padded[i, dy:dy + 8, dx:dx + 8]
    ref = ref[:, ::-1] if params["flip"][i] else ref
    np.testing.assert_array_equal(out[i], ref)
  assert params["dy"].min() >= 0 and params["dy"].max() <= 8


def test_augmentation_draws_are_shared_across_hosts():
  src = _source(64, (6, 6, 3))
  single = TrainPipeline(src, global_batch_size=8, seed=1, augment="crop_flip").batch(3)
  halves = [TrainPipeline(src, global_batch_size=8, seed=1, augment="crop_flip",
                          process_index=p, process_count=2).batch(3) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["inputs"] for h in halves]), single["inputs"])


def test_eval_batches_cover_every_example_once_with_a_mask():
  src = _source(23)
  seen, count = [], 0.0
  for batch in eval_batches(src, 8):
    assert batch["inputs"].shape[0] == 8
    seen += batch["targets"][batch["mask"] > 0].tolist()
    count += batch["mask"].sum()
  assert sorted(seen) == list(range(23)) and count == 23
  # Two hosts: each takes its half of every global batch.
  per_host = [list(eval_batches(src, 8, process_index=p, process_count=2)) for p in range(2)]
  merged = [t for b0, b1 in zip(*per_host) for t in
            np.concatenate([b0["targets"][b0["mask"] > 0], b1["targets"][b1["mask"] > 0]])]
  assert merged == list(range(23))


def test_synthetic_source_is_sliced_per_host():
  class Synthetic:
    def get_batch(self, step, batch_size):
      return {"inputs": {"x": np.full((batch_size, 2), step)}, "targets": np.arange(batch_size)}

  part = TrainPipeline(Synthetic(), global_batch_size=6, seed=0, process_index=1,
                       process_count=3).batch(4)
  np.testing.assert_array_equal(part["targets"], [2, 3])
  assert part["inputs"]["x"].shape == (2, 2) and part["inputs"]["x"][0, 0] == 4


def test_bad_pipeline_arguments():
  with pytest.raises(errors.ConfigError, match="not divisible by the 3 hosts"):
    TrainPipeline(_source(10), global_batch_size=8, seed=0, process_count=3)
  with pytest.raises(errors.UnknownNameError, match="crop_flip"):
    get_augmentation("crop")
  with pytest.raises(errors.ConfigError, match="empty"):
    TrainPipeline({"inputs": np.zeros((0, 2)), "targets": np.zeros(0)}, global_batch_size=2,
                  seed=0)
