"""The grokking probes inside the generic train loop, and the grokking configs."""

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdl.train as jtrain
from jaxdl import errors
from jaxdl.analysis import local_complexity
from jaxdl.train import probes


def _load_config(repo_root, name, arg=None):
  spec = importlib.util.spec_from_file_location(name, repo_root / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def _records(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def modular_run(tmp_path_factory, repo_root):
  config = _load_config(repo_root, "grok_modular", "runlocal")
  config.probes = "grok_accuracy,local_complexity"
  config.probe_kwargs.lc_sets = "train,test,random,boundary"
  workdir = tmp_path_factory.mktemp("grok_modular")
  final = jtrain.run(config, workdir)
  return config, workdir, final


def test_probes_write_lc_and_accuracy_at_log_steps(modular_run):
  config, workdir, final = modular_run
  evals = [r for r in _records(workdir) if "grok/train_accuracy" in r]
  steps = [r["step"] for r in evals]
  assert steps[0] == 0 and steps[-1] == config.num_train_steps and len(steps) >= 3
  for r in evals:
    assert 0 <= r["grok/train_accuracy"] <= 1 and 0 <= r["grok/test_accuracy"] <= 1
    for name in ("train", "test", "random"):
      total = r[f"lc_r0.1/{name}/total"]
      layers = [r[f"lc_r0.1/{name}/{k}"] for k in ("act_0", "logits")]
      assert total == pytest.approx(sum(layers), rel=1e-6)
      assert 0 <= total <= 256 + 97
  # The probe's full-split accuracy agrees with the loop's own evaluation on the test split.
  assert evals[-1]["grok/test_accuracy"] == pytest.approx(final["eval/accuracy"], abs=1e-6)
  # Training moves LC and accuracy (the probes see the current parameters, not the initial).
  assert evals[-1]["grok/train_accuracy"] != evals[0]["grok/train_accuracy"]
  assert evals[-1]["lc_r0.1/train/total"] != evals[0]["lc_r0.1/train/total"]


def test_lc_probe_matches_direct_call(modular_run):
  # The probe at fixed variables equals local_complexity on the same points and frame.
  config, _, _ = modular_run
  from jaxdl.analysis.local_complexity import random_directions
  from jaxdl.data import get_info, load
  from jaxdl.train.loop import create_model, make_preprocess
  kwargs = dict(config.dataset.kwargs)
  info = get_info("modular_addition", **kwargs)
  datasets = {s: load("modular_addition", s, **kwargs) for s in ("train", "test")}
  model = create_model(config, info)
  preprocess = make_preprocess(info)
  config.probe_kwargs.lc_sets = "train"
  config.probe_kwargs.lc_num_points = 0  # The whole split, no sampling.
  probe = probes.get("local_complexity")(config, model, datasets, preprocess)
  variables = model.init(jax.random.key(3), jnp.zeros((1, 194)))
  got = probe(variables, 0)
  frame = random_directions(jax.random.key(0), config.probe_kwargs.lc_num_directions, (194,))
  lc = local_complexity(model.apply, variables, preprocess(jnp.asarray(
      datasets["train"]["inputs"])), radius=0.1, directions=frame)
  assert got["lc_r0.1/train/total"] == pytest.approx(float(np.mean(lc["total"])), rel=1e-6)


def test_adversarial_probe_on_digits(tmp_path):
  from jaxdl.train.defaults import default_config
  c = default_config()
  c.model.name = "mlp"
  c.model.features = (64,)
  c.dataset.name = "digits"
  c.batch_size = 64
  c.num_train_steps = 60
  c.optimizer.learning_rate = 3e-3
  c.log_every_steps = 30
  c.checkpoint_every_steps = 60
  c.eval_schedule = "log"
  c.num_eval_points = 2
  c.probes = "adversarial"
  c.probe_kwargs.adv_pixel_max = 16.0  # digits pixels are 0..16
  c.probe_kwargs.adv_eps = 4.0 / 16
  c.probe_kwargs.adv_step_size = 1.0 / 16
  c.probe_kwargs.adv_num_steps = 5
  c.probe_kwargs.adv_num_points = 128
  c.probe_kwargs.adv_extra_eps = (0.5 / 16,)
  jtrain.run(c, tmp_path)
  last = [r for r in _records(tmp_path) if "adv/test_accuracy" in r][-1]
  assert last["adv/test_clean_accuracy"] > 0.8
  assert last["adv/test_accuracy"] < last["adv/test_clean_accuracy"] - 0.2
  # An 8x smaller attack hurts less than the full one and no more than clean.
  small = last["adv/test_accuracy_eps0.03125"]
  assert last["adv/test_accuracy"] < small <= last["adv/test_clean_accuracy"]


def test_probe_option_errors():
  from jaxdl.train.defaults import default_config
  c = default_config()
  c.probe_kwargs.lc_radii = (0.0,)
  with pytest.raises(errors.ConfigError, match="lc_radii"):
    probes.get("local_complexity")(c, None, {"train": {"inputs": np.zeros((2, 3)),
                                                        "targets": np.zeros(2)}}, None)
  c.probe_kwargs.lc_radii = (0.1,)
  c.probe_kwargs.lc_sets = "train,valid"
  with pytest.raises(errors.ConfigError, match="lc_sets"):
    probes.get("local_complexity")(c, None, {"train": {"inputs": np.zeros((2, 3)),
                                                        "targets": np.zeros(2)}}, None)


@pytest.mark.parametrize("name,arg", [("grok_mnist_mlp", None), ("grok_cifar10_cnn", None),
                                      ("grok_cifar10_cnn", "cnn"), ("grok_modular", None)])
def test_configs_build(repo_root, name, arg):
  from jaxdl import models
  from jaxdl.data import get_info
  c = _load_config(repo_root, name, arg)
  info = get_info(c.dataset.name, **dict(c.dataset.kwargs))
  from jaxdl.train.loop import create_model
  model = create_model(c, info)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + info.input_shape))
  assert shapes["params"]
  for p in probes.parse(c.probes):
    probes.get(p)
  assert c.loss in ("mse", "cross_entropy")
  if c.model.name == "preact_resnet18":  # The paper's model: 16 ReLU inputs, no BatchNorm.
    assert "batch_stats" not in shapes
    assert len(jax.tree_util.tree_leaves(shapes["preactivations"])) == 16
  del models
