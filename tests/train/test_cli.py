"""The command line: one-line errors with a non-zero exit code, and config overrides."""

import keyword
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags
from hypothesis import given, settings, strategies as st
from ml_collections import config_flags

from jaxdl import errors
from jaxdl.train.loop import validate

REPO = Path(__file__).resolve().parents[2]

# Each case: extra arguments, environment, and words the one-line error must contain.
CASES = {
    "unknown_model": (["--config.model.name=resnet9000"], {}, ["unknown model", "Choose one of"]),
    "unknown_dataset": (["--config.dataset.name=cifar11"], {}, ["unknown dataset", "cifar10"]),
    "missing_data": (["--config.dataset.name=cifar10"], {"JAXDL_DATA_DIR": "/nonexistent/x"},
                     ["not found", "/nonexistent/x", "JAXDL_DATA_DIR"]),
    "bad_value": (["--config.batch_size=-3"], {}, ["batch_size=-3", "positive"]),
    "bad_steps_per_call": (["--config.steps_per_call=0"], {}, ["steps_per_call=0", "positive"]),
    "bad_model_option": (["--config.model.num_layers=3"], {},
                         ["no option", "num_layers", "its options are"]),
    "typo_in_key": (["--config.optimizer.lr=3"], {}, ["optimizer.lr", "optimizer.learning_rate"]),
    "wrong_input_shape": (["--config.dataset.name=uci", "--config.model.name=cnn_small",
                           "--config.dataset.eval_split="], {},
                          ["cannot take inputs of shape", "cnn_small"]),
    "unknown_override_key": (["--config.batch_sise=8"], {}, ["batch_sise", "batch_size"]),
    "wrong_override_type": (["--config.batch_size=eight"], {}, ["batch_size"]),
    "keyword_override_key": (["--config.else=1"], {}, ["bad --config override", "'else'"]),
    "missing_config_file": (["--config=configs/nope.py"], {}, ["nope.py", "not found"]),
    "config_raises": (["--config=configs/quickstart.py:runlocal", "--config.seed=1",
                       "--config.mesh.data=3"], {}, ["mesh", "devices"]),
}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
  """Runs every case as its own process, all at once (they are independent)."""
  procs = {}
  for name, (args, env, _) in CASES.items():
    workdir = tmp_path_factory.mktemp(name)
    argv = ["--config", "configs/quickstart.py:runlocal", "--workdir", str(workdir), *args]
    if args and args[0].startswith("--config="):
      argv = [args[0], "--workdir", str(workdir), *args[1:]]
    import os
    procs[name] = subprocess.Popen(
        [sys.executable, "-m", "jaxdl.train", *argv], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})
  return {name: (p.wait(timeout=300), p.stdout.read(), p.stderr.read())
          for name, p in procs.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line(cli_results, case):
  code, out, err = cli_results[case]
  lines = [l for l in err.strip().splitlines() if not l.startswith(("WARNING", "INFO"))]
  assert code == 2, err
  assert "Traceback" not in err
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  for word in CASES[case][2]:
    assert word in lines[0], lines[0]


def test_missing_workdir_is_an_error():
  r = subprocess.run([sys.executable, "-m", "jaxdl.train", "--config",
                      "configs/quickstart.py"], cwd=REPO, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 2 and r.stderr.strip() == (
      "error: --workdir is required: the directory for checkpoints and metrics.")


def _parse(argv):
  argv = ["prog", "--config", str(REPO / "configs/quickstart.py"), *argv]
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
  fv(argv)
  return holder.value


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(-1000, 1000), lr=st.floats(1e-6, 10.0), steps=st.integers(-5, 10 ** 6),
       name=st.sampled_from(["mlp", "cnn", "cnn_small"]))
def test_config_overrides_property(batch, lr, steps, name):
  """Overrides land in the config; validate() accepts exactly the valid values."""
  config = _parse([f"--config.batch_size={batch}", f"--config.optimizer.learning_rate={lr!r}",
                   f"--config.num_train_steps={steps}", f"--config.model.name={name}"])
  assert config.batch_size == batch and config.num_train_steps == steps
  assert config.optimizer.learning_rate == pytest.approx(lr) and config.model.name == name
  if batch > 0:
    validate(config)
  else:
    with pytest.raises(errors.ConfigError, match="batch_size"):
      validate(config)


@settings(max_examples=20, deadline=None)
@given(key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12))
def test_unknown_override_keys_are_rejected_property(key):
  """A key the config does not have is refused with a message naming it (CLI check)."""
  from jaxdl.train import __main__ as cli_main
  from jaxdl.train.defaults import default_config
  if key in default_config() or keyword.iskeyword(key):
    return  # a keyword is not a parsable key at all: CASES["keyword_override_key"]
  argv = ["prog", "--config", str(REPO / "configs/quickstart.py"), f"--config.{key}=1"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv,
                                  lock_config=False, accept_new_attributes=True)
  fv(argv)
  old = cli_main.FLAGS
  cli_main.FLAGS = fv
  try:
    problem = cli_main._check_new_keys(str(REPO / "configs/quickstart.py"))
  finally:
    cli_main.FLAGS = old
  assert problem is not None and repr(key) in problem
