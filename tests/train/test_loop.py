"""End-to-end tests of the generic training loop: accuracy, resumption, crashes, sharding."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxdl.data as jdata
from jaxdl import errors
from jaxdl.data.registry import DatasetInfo
from jaxdl.train import loop as loop_lib
from jaxdl.train import train_and_evaluate
from jaxdl.train.checkpoint import load_variables
from jaxdl.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from configs import quickstart  # noqa: E402


def _losses(workdir):
  return [m["train/loss"] for m in read_metrics(workdir) if "train/loss" in m]


def _assert_same_params(a, b, exact=True):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and len(la) > 0
  for x, y in zip(la, lb):
    if exact:
      np.testing.assert_array_equal(x, y)
    else:
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The main job.

@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("quickstart")
  config = quickstart.get_config()
  config.keep_checkpoints = 2
  final = train_and_evaluate(config, workdir)
  return workdir, final


def test_quickstart_reaches_95_percent_on_digits(quickstart_run):
  workdir, final = quickstart_run
  assert final["eval/accuracy"] >= 0.95
  records = read_metrics(workdir)
  assert all("step" in r for r in records)
  steps = [r["step"] for r in records if "train/loss" in r]
  assert steps == sorted(steps) and steps[-1] == final["step"]
  # Throughput between log points: positive, and examples = steps x batch size.
  logged = [r for r in records if "train/loss" in r]
  assert all(r["train/steps_per_sec"] > 0 for r in logged)
  batch_size = quickstart.get_config().batch_size
  for r in logged:
    np.testing.assert_allclose(r["train/examples_per_sec"],
                               r["train/steps_per_sec"] * batch_size, rtol=1e-9)
  evals = [r for r in records if "eval/accuracy" in r]
  assert [r["step"] for r in evals] == [300, 600, final["step"]]
  # The loss went down and TensorBoard event files exist.
  losses = _losses(workdir)
  assert losses[-1] < 0.2 * losses[0]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  # keep_checkpoints=2: only the two newest remain.
  kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == [600, final["step"]]
  assert json.loads((workdir / "config.json").read_text())["model"]["name"] == "cnn_small"


def test_sigkill_then_restart_gives_identical_parameters(quickstart_run, tmp_path, cli):
  """Killing the process mid-run and restarting loses only the steps since the last
  checkpoint and ends with exactly the parameters of the uninterrupted run."""
  reference_dir, final = quickstart_run
  workdir = tmp_path / "killed"
  args = ["--config", "configs/quickstart.py", "--workdir", str(workdir),
          "--config.checkpoint_every_steps=100"]
  proc = subprocess.Popen([sys.executable, "-m", "jaxdl.train", *args], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpts = workdir / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and not (ckpts / "300").is_dir():
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  done = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
  assert done and done[-1] < final["step"]
  last = done[-1]

  result = cli(args)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"resuming from checkpoint step {last}" in result.stderr
  _assert_same_params(load_variables(workdir), load_variables(reference_dir))
  steps = [m["step"] for m in read_metrics(workdir) if "train/loss" in m]
  assert steps == sorted(set(steps)), "metrics.jsonl repeats steps after the resume"


def test_sigint_writes_a_checkpoint_and_the_restart_matches(quickstart_run, tmp_path, cli):
  """SIGINT (or SIGTERM, a preemption) stops at the next step boundary after writing a
  checkpoint of that step, exits 130 with one line, and the restart loses nothing."""
  reference_dir, final = quickstart_run
  workdir = tmp_path / "interrupted"
  args = ["--config", "configs/quickstart.py", "--workdir", str(workdir),
          "--config.checkpoint_every_steps=100000"]  # No periodic checkpoint before the end.
  proc = subprocess.Popen([sys.executable, "-m", "jaxdl.train", *args], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  metrics_file = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and not (
      metrics_file.exists() and any(m.get("step", 0) >= 100 for m in read_metrics(workdir))):
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130, stderr[-2000:]
  last_line = stderr.strip().splitlines()[-1]
  assert last_line.startswith("error: interrupted at step "), last_line
  step = int(last_line.split("interrupted at step ")[1].split(";")[0])
  assert 100 <= step < final["step"]
  ckpts = workdir / "checkpoints"
  assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [step]

  result = cli(args)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"resuming from checkpoint step {step}" in result.stderr
  _assert_same_params(load_variables(workdir), load_variables(reference_dir))


# ---------------------------------------------------------------------------------------------
# Reliability.

def _runlocal(**overrides):
  config = quickstart.get_config("runlocal")
  for key, value in overrides.items():
    node = config
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return config


def test_corrupted_latest_checkpoint_is_skipped(tmp_path, caplog):
  workdir = tmp_path / "run"
  config = _runlocal()
  train_and_evaluate(config, workdir)
  ckpts = workdir / "checkpoints"
  assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [20, 40, 45]
  reference = load_variables(workdir, 45)
  for f in (ckpts / "45").rglob("*"):
    if f.is_file():
      f.write_bytes(b"corrupted")
  caplog.set_level("WARNING", logger="jaxdl")
  train_and_evaluate(config, workdir)
  assert any("unreadable" in r.message and "step 45" in r.message for r in caplog.records)
  assert list((workdir / "corrupted_checkpoints").iterdir())
  # Resumed from step 40 and redid 40 -> 45 to the same parameters.
  _assert_same_params(load_variables(workdir, 45), reference)


def test_in_flight_blocks_on_the_oldest_step_beyond_its_limit():
  waited = []
  q = loop_lib.InFlight(limit=2, wait=waited.append)
  for i in range(5):
    q.add(i)
    assert len(q.queue) == min(i + 1, 2)
  assert waited == [0, 1, 2]


def test_the_loop_keeps_few_steps_in_flight(tmp_path, monkeypatch):
  # The host never runs more than MAX_STEPS_IN_FLIGHT steps ahead of the device: a stop
  # request (SIGTERM) then waits for at most that many steps, not for all dispatched ones.
  seen = []

  class Recording(loop_lib.InFlight):
    def add(self, outputs):
      super().add(outputs)
      seen.append(len(self.queue))

  monkeypatch.setattr(loop_lib, "InFlight", Recording)
  config = _runlocal(**{"num_train_steps": 12, "eval_every_steps": 0})
  train_and_evaluate(config, tmp_path)
  assert len(seen) == 12 and max(seen) == loop_lib.MAX_STEPS_IN_FLIGHT


# ---------------------------------------------------------------------------------------------
# Several steps per compiled call (config.steps_per_call).

def test_call_plan_ends_a_call_at_every_boundary():
  boundaries = {10, 20, 23}
  plan = list(loop_lib.call_plan(0, 23, 4, boundaries.__contains__))
  assert plan == [(0, 4), (4, 4), (8, 1), (9, 1), (10, 4), (14, 4), (18, 1), (19, 1),
                  (20, 1), (21, 1), (22, 1)]
  # From any start and call length: contiguous, no boundary inside a call, full calls only
  # of the given length.
  for start in range(0, 12):
    for k in (1, 2, 3, 5):
      plan = list(loop_lib.call_plan(start, 23, k, boundaries.__contains__))
      assert [s for s, _ in plan] == list(
          np.cumsum([start] + [n for _, n in plan])[:-1])
      assert sum(n for _, n in plan) == 23 - start
      assert all(n in (1, k) for _, n in plan)
      assert not any(d in boundaries for s, n in plan for d in range(s + 1, s + n))
  assert list(loop_lib.call_plan(5, 5, 4, boundaries.__contains__)) == []


def _k_config(k, **overrides):
  # Mixup and label smoothing: the step's randomness (fold_in of the step) is exercised too.
  return _runlocal(**{"steps_per_call": k, "mixup_alpha": 0.2, "label_smoothing": 0.1,
                      "checkpoint_every_steps": 15, **overrides})


@pytest.fixture(scope="module")
def one_step_per_call_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("k1")
  final = train_and_evaluate(_k_config(1), workdir)
  return workdir, final


def test_steps_per_call_gives_the_parameters_of_one_step_per_call(one_step_per_call_run,
                                                                  tmp_path, caplog):
  """Four steps per call (with one-step calls up to log / eval / checkpoint steps that are not
  multiples of 4) reach the parameters, logged losses and evaluation of one step per call."""
  ref_dir, ref = one_step_per_call_run
  caplog.set_level("INFO", logger="jaxdl")
  final = train_and_evaluate(_k_config(4), tmp_path)
  assert any("steps_per_call=4: step" in r.message for r in caplog.records)
  assert final["step"] == ref["step"] == 45
  _assert_same_params(load_variables(tmp_path), load_variables(ref_dir), exact=False)
  np.testing.assert_allclose(_losses(tmp_path), _losses(ref_dir), rtol=1e-5)
  assert [m["step"] for m in read_metrics(tmp_path) if "train/loss" in m] == \
      [m["step"] for m in read_metrics(ref_dir) if "train/loss" in m]
  np.testing.assert_allclose(final["eval/loss"], ref["eval/loss"], rtol=1e-5)
  ckpts = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert ckpts == [15, 30, 45]


def test_steps_per_call_resumes_from_a_checkpoint_between_calls(tmp_path):
  """Resuming at step 15 (not a multiple of 4) redoes 15 -> 45 to the same parameters."""
  config = _k_config(4)
  train_and_evaluate(config, tmp_path)
  reference = load_variables(tmp_path, 45)
  for step in (30, 45):
    shutil.rmtree(tmp_path / "checkpoints" / str(step))
  train_and_evaluate(config, tmp_path)
  _assert_same_params(load_variables(tmp_path, 45), reference)


def test_steps_per_call_keeps_few_steps_in_flight(tmp_path, monkeypatch):
  limits = []

  class Recording(loop_lib.InFlight):
    def __init__(self, limit, **kwargs):
      limits.append(limit)
      super().__init__(limit, **kwargs)

  monkeypatch.setattr(loop_lib, "InFlight", Recording)
  train_and_evaluate(_runlocal(num_train_steps=8, steps_per_call=4, eval_every_steps=0),
                     tmp_path)
  assert limits == [1]  # one call of 4 steps may wait while the next is dispatched


class _NanAfter:
  """Finite batches until `bad_step`, then NaN inputs."""

  def __init__(self, bad_step):
    self.bad_step = bad_step

  def get_batch(self, step, batch_size):
    rng = np.random.default_rng(step)
    x = rng.normal(size=(batch_size, 4)).astype(np.float32)
    if step >= self.bad_step:
      x[:] = np.nan
    return {"inputs": x, "targets": rng.integers(0, 3, batch_size)}


jdata.register("test_nan_after_12", DatasetInfo(
    name="test_nan_after_12", task="classification", num_classes=3, input_shape=(4,),
    splits=("train",)))(lambda split, data_dir=None: _NanAfter(12))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
  config = _runlocal(**{"model.name": "mlp", "dataset.name": "test_nan_after_12",
                        "dataset.eval_split": "", "num_train_steps": 30, "batch_size": 8,
                        "log_every_steps": 5, "checkpoint_every_steps": 5,
                        "eval_every_steps": 0})
  with pytest.raises(errors.NonFiniteLossError) as e:
    train_and_evaluate(config, tmp_path)
  msg = str(e.value)
  assert "\n" not in msg and "by step 15" in msg and "step 10" in msg and "learning_rate" in msg
  ckpts = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert ckpts == [5, 10]
  params = load_variables(tmp_path)["params"]
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))


# ---------------------------------------------------------------------------------------------
# Sharding: 8 host devices, and 2 processes, give the 1-device loss curve.

SHARD_ARGS = ["--config", "configs/quickstart.py:runlocal", "--config.model.name=mlp",
              "--config.param_sharding=fsdp", "--config.batch_size=64",
              "--config.num_train_steps=30", "--config.log_every_steps=5",
              "--config.checkpoint_every_steps=30", "--config.eval_batch_size=64"]


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_device")
  result = subprocess.run([sys.executable, "-m", "jaxdl.train", *SHARD_ARGS, "--workdir",
                           str(workdir)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "XLA_FLAGS": ""})
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


@pytest.mark.parametrize("steps_per_call", [1, 5])
def test_eight_host_devices_match_one_device(one_device_run, tmp_path, cli, steps_per_call):
  # steps_per_call=5: batches of 5 steps stacked on axis 0, examples sharded on axis 1.
  result = cli([*SHARD_ARGS, "--workdir", str(tmp_path),
                f"--config.steps_per_call={steps_per_call}"],
               env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert result.returncode == 0, result.stderr[-2000:]
  ref = _losses(one_device_run)
  assert len(ref) == 6
  np.testing.assert_allclose(_losses(tmp_path), ref, rtol=1e-5)
  _assert_same_params(load_variables(tmp_path), load_variables(one_device_run), exact=False)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("steps_per_call", [1, 5])
def test_two_processes_match_one_process(one_device_run, tmp_path, steps_per_call):
  # steps_per_call=5: each process stacks its own rows of 5 steps' batches.
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "jaxdl.train", *SHARD_ARGS, "--workdir", str(tmp_path),
       f"--config.steps_per_call={steps_per_call}",
       "--multihost", f"--coordinator_address=localhost:{port}", "--num_processes=2",
       f"--process_id={i}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env={**os.environ, "XLA_FLAGS": ""}) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  np.testing.assert_allclose(_losses(tmp_path), _losses(one_device_run), rtol=1e-5)
  _assert_same_params(load_variables(tmp_path), load_variables(one_device_run), exact=False)


def test_the_train_and_eval_steps_compile_with_jaxdl_compiler_options(monkeypatch):
  """The loop's steps are compiled with jaxdl.compiler's options: with options that switch
  YNNPACK off they have no YNNPACK fusion, with XLA's defaults they have."""
  from jaxdl import compiler
  from jaxdl.train import loop
  from jaxdl.train import sharding as shard_lib
  if jax.default_backend() != "cpu":
    pytest.skip("jaxdl.compiler's options are XLA:CPU's")

  def fusions(options):
    monkeypatch.setattr(compiler, "CPU_OPTIONS", options)
    built = loop.setup(_runlocal())
    batch = built.pipeline.batch(0)
    batch = dict(batch, mask=np.ones(len(batch["targets"]), np.float32))
    batch = shard_lib.global_batch(batch, built.mesh)
    return [compiler.ynn_fusions(step.lower(built.abstract_state, batch).compile().as_text())
            for step in (built.train_step, built.eval_step)]

  assert fusions({"xla_cpu_experimental_ynn_fusion_type": ""}) == [[], []]
  assert all(fusions({}))  # nothing to set: XLA's defaults, which use YNNPACK here
