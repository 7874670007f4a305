"""Cyclical SGHMC on a CNN with a GP-fitted prior, end to end on the bundled digits."""

import importlib.util
import json
import math

import pytest

from jaxdl.train import bnn as bnn_trainer


def _config(repo_root):
  spec = importlib.util.spec_from_file_location(
      "cifar10_bnn_sghmc", repo_root / "configs" / "cifar10_bnn_sghmc.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config("runlocal")


@pytest.mark.slow
def test_cnn_with_gp_prior_and_cyclical_sghmc(tmp_path, repo_root):
  c = _config(repo_root)
  c.dataset = "digits"           # bundled 8x8 images: no data folder needed
  c.num_train, c.num_test = 0, 0
  c.model.features, c.model.dense = (8,), (16,)
  c.prior = "gp_gaussian"
  c.sampler.step_size = 1e-4
  c.sampler.steps_per_cycle = 60
  final = bnn_trainer.train_bnn_classification(c, tmp_path)
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert any("fit/wasserstein" in l for l in lines)       # the CNN prior was fitted
  assert final["num_samples"] == c.sampler.num_cycles * c.sampler.samples_per_cycle
  assert math.isfinite(final["test_nll"]) and 0 <= final["test_ece"] <= 1
  # 120 SGHMC steps on digits already beat chance (10%) by far.
  assert final["test_accuracy"] > 0.5, final
