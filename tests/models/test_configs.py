"""The model-zoo experiment configs: the papers' recipes, valid keys, runlocal smoke runs."""

import importlib.util
import subprocess
import sys

import pytest

import jaxdl.models as models
from jaxdl import errors
from jaxdl.train.defaults import default_config


def _load(repo_root, name, arg=None):
  spec = importlib.util.spec_from_file_location(name, repo_root / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _keys(cfg, prefix=""):
  out = set()
  for k, v in cfg.items():
    out.add(prefix + k)
    if hasattr(v, "items") and k not in ("model", "probe_kwargs"):
      out |= _keys(v, prefix + k + ".")
  return out


@pytest.mark.parametrize("name", ["cifar10_densenet_bc100", "imagenet_rdnet_tiny"])
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_configs_use_the_schema_and_valid_model_options(repo_root, name, arg):
  cfg = _load(repo_root, name, arg)
  assert _keys(cfg) <= _keys(default_config())  # nothing the loop would ignore
  overrides = {k: v for k, v in cfg.model.items() if k != "name"}
  models.create(cfg.model.name, **overrides)  # raises ConfigError on an unknown option


@pytest.mark.parametrize("name", ["cifar10_densenet_bc100", "imagenet_rdnet_tiny"])
def test_unknown_variant_is_a_one_line_config_error(repo_root, name):
  with pytest.raises(errors.ConfigError, match="unknown config variant 'gpu'") as e:
    _load(repo_root, name, "gpu")
  assert "\n" not in str(e.value)


def test_densenet_bc100_is_the_papers_recipe(repo_root):
  c = _load(repo_root, "cifar10_densenet_bc100")
  assert (c.model.name, c.dataset.name, c.dataset.augment) == (
      "densenet_bc_100_k12", "cifar10", "crop_flip")
  o = c.optimizer
  assert (o.name, o.momentum, o.nesterov, o.learning_rate) == ("momentum", 0.9, True, 0.1)
  assert (o.schedule, tuple(o.decay_boundaries), o.decay_factor) == ("step", (0.5, 0.75), 0.1)
  assert (o.weight_decay, c.batch_size, c.num_epochs) == (1e-4, 64, 300.0)


def test_rdnet_tiny_is_the_authors_recipe(repo_root):
  c = _load(repo_root, "imagenet_rdnet_tiny")
  o = c.optimizer
  assert (o.name, o.learning_rate, o.weight_decay, o.schedule) == ("adamw", 1e-3, 0.05, "cosine")
  assert (o.warmup_epochs, c.num_epochs, c.label_smoothing) == (20.0, 300.0, 0.1)
  assert (c.mixup_alpha, c.cutmix_alpha, c.model.drop_path_rate) == (0.8, 1.0, 0.15)
  assert c.dataset.name == "tfds:imagenet2012"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10_densenet_bc100", "imagenet_rdnet_tiny"])
def test_runlocal_trains_end_to_end(repo_root, data_dir, tmp_path, name):
  """The CLI runs the runlocal variant for a few steps on the offline CIFAR-10."""
  proc = subprocess.run(
      [sys.executable, "-m", "jaxdl.train", "--config", f"configs/{name}.py:runlocal",
       "--workdir", str(tmp_path)], cwd=repo_root, capture_output=True, text=True,
      timeout=1800)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "step=6" in proc.stdout + proc.stderr
  assert (tmp_path / "metrics.jsonl").exists()
