"""PFN training on the generic loop: the pfn_prior dataset, the losses, a tiny end-to-end run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import data as jdata
from jaxdl import errors
from jaxdl.inference import pfn
from jaxdl.train import losses
import jaxdl.train.pfn  # noqa: F401  (registers pfn_prior, bar_nll, pfn_cross_entropy)

GP = {"kind": "gp", "lengthscale": 0.3, "noise_variance": 0.1}


def test_prior_dataset_is_deterministic_in_seed_and_step():
  ds = jdata.load("pfn_prior", "train", prior=GP, seq_len=12, max_context=8, min_context=2,
                  num_buckets=16, border_samples=2000)
  a, b, c = ds.get_batch(3, 5), ds.get_batch(3, 5), ds.get_batch(4, 5)
  np.testing.assert_array_equal(a["inputs"]["y"], b["inputs"]["y"])
  assert not np.allclose(a["inputs"]["y"], c["inputs"]["y"])
  nc = np.concatenate([ds.get_batch(s, 64)["inputs"]["num_context"] for s in range(3)])
  assert nc.min() == 2 and nc.max() == 8
  assert a["borders"].shape == (5, 17) and np.all(np.diff(a["borders"][0]) > 0)
  np.testing.assert_array_equal(a["targets"], a["inputs"]["y"])
  with pytest.raises(errors.ConfigError, match="query row"):
    jdata.load("pfn_prior", "train", prior=GP, seq_len=8, max_context=8)
  with pytest.raises(errors.ConfigError, match="no option"):
    jdata.load("pfn_prior", "train", prior=GP, sequence_length=8)
  info = jdata.get_info("pfn_prior", prior=GP, num_buckets=16)
  assert info.task == "regression" and info.num_classes == 16


def test_bar_nll_averages_query_rows_only():
  borders = jnp.linspace(-3.0, 3.0, 9)
  logits = jax.random.normal(jax.random.key(0), (2, 5, 8))
  y = jax.random.normal(jax.random.key(1), (2, 5))
  batch = {"inputs": {"num_context": jnp.array([2, 4])}, "targets": y,
           "borders": jnp.broadcast_to(borders, (2, 9))}
  loss, metrics = losses.get("bar_nll")(logits, batch)
  nll = -np.asarray(pfn.BarDistribution(borders).log_prob(logits, y))
  np.testing.assert_allclose(loss, [nll[0, 2:].mean(), nll[1, 4:].mean()], rtol=1e-6)
  # Context rows' outputs do not enter the loss.
  loss2, _ = losses.get("bar_nll")(logits.at[:, :2].set(50.0), batch)
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  assert set(metrics) == {"nll", "squared_error"}
  ce, m = losses.get("pfn_cross_entropy")(logits, {"inputs": batch["inputs"],
                                                   "targets": jnp.zeros((2, 5), int)})
  ref = -np.asarray(jax.nn.log_softmax(logits, -1))[..., 0]
  np.testing.assert_allclose(ce, [ref[0, 2:].mean(), ref[1, 4:].mean()], rtol=1e-6)
  assert m["accuracy"].shape == (2,)


def test_tiny_training_run_through_the_generic_loop(tmp_path):
  import importlib.util
  from jaxdl.train import run
  spec = importlib.util.spec_from_file_location("pfn_gp_config", "configs/pfn_gp.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config("runlocal")
  config.model.num_layers = 1
  config.model.emsize = 32
  config.model.hidden = 32
  config.model.decoder_hidden = 32
  config.model.num_classes = 20
  config.dataset.kwargs.num_buckets = 20
  config.dataset.kwargs.border_samples = 1000
  config.dataset.kwargs.seq_len = 12
  config.dataset.kwargs.max_context = 8
  config.batch_size = 4
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.checkpoint_every_steps = 4
  final = run(config, str(tmp_path))
  assert np.isfinite(final["train/loss"]) and final["step"] == 4
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [2, 4]
  assert (tmp_path / "checkpoints" / "4").exists()
