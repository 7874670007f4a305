"""tools/bench_gpu.py --smoke runs on CPU and produces every section of its table.

The numbers of a CPU smoke run mean nothing; only the structure is checked. The torch
section is skipped (a row says so) when torch/timm are not importable, as in the default
environment.
"""

import importlib.util

import pytest


def _check(rows, models, configs):
  sections = {r["section"] for r in rows}
  assert "peak" in sections and "torch" in sections
  jax_rows = [r for r in rows if r["section"] == "jaxdl"]
  assert len(jax_rows) == len(models) * len(configs)
  for r in jax_rows:
    assert r["images_per_s"] > 0 and r["ms"] > 0 and r["mfu"] > 0
  torch_available = importlib.util.find_spec("torch") and importlib.util.find_spec("timm")
  if not torch_available:
    assert [r["config"] for r in rows if r["section"] == "torch"] == [
        "skipped: torch/timm not importable"]


def test_smoke_table_and_json(capsys, tmp_path, tool):
  # The cheap part by default (peak, torch section, table, JSON); a model train step and the
  # kernel microbenchmarks run in the slow tests below (~20 CPU-s); the bottleneck_impl model
  # option that "+kernels" uses is checked against XLA in tests/models/test_densenet.py.
  rows = tool("bench_gpu").main(["--smoke", "--skip", "jax", "kernels", "--json",
                        str(tmp_path / "r.json")])
  _check(rows, [], [])
  out = capsys.readouterr().out
  assert "bf16 matmul" in out and "| torch" in out
  assert '"rows"' in (tmp_path / "r.json").read_text()


@pytest.mark.slow
def test_smoke_one_model_with_kernels(capsys, tool):
  rows = tool("bench_gpu").main(["--smoke", "--models", "densenet_bc_100_k12", "--configs",
                        "bf16+kernels", "--skip", "kernels"])
  _check(rows, ["densenet_bc_100_k12"], ["bf16+kernels"])
  assert "train bf16+kernels" in capsys.readouterr().out


def test_smoke_steps_per_call(capsys, tool):
  """--steps-per-call 2 adds a row per configuration timed two steps per compiled call."""
  rows = tool("bench_gpu").main(["--smoke", "--models", "densenet_bc_100_k12", "--configs",
                                 "f32", "--skip", "kernels", "--steps-per-call", "2"])
  jax_rows = [r for r in rows if r["section"] == "jaxdl"]
  assert [r["steps_per_call"] for r in jax_rows] == [1, 2]
  assert all(r["images_per_s"] > 0 and r["mfu"] > 0 for r in jax_rows)
  assert "2 steps/call" in capsys.readouterr().out


@pytest.mark.slow
def test_full_smoke_run(capsys, tool):
  bench = tool("bench_gpu")
  rows = bench.main(["--smoke"])
  configs = ["f32", "bf16", "f32+kernels", "bf16+kernels"]
  jax_rows = [r for r in rows if r["section"] == "jaxdl"]
  # Kernel configurations only for the DenseNets (no kernel applies to rdnet/resnet).
  assert len(jax_rows) == 2 * 4 + 2 * 2
  kernel_rows = [r for r in rows if r["section"] == "kernel"]
  names = {r["name"] for r in kernel_rows}
  assert names == {"dense_bottleneck fwd+bwd", "prototype_min_distance fwd+bwd",
                   "context_attention fwd+bwd"}
  assert all("ms" in r for r in kernel_rows), [r for r in kernel_rows if "ms" not in r]
  del configs


def test_cpu_flop_count_in_a_separate_process(tool):
  # The MFU fallback when the accelerator's lowering has no cost analysis: the same step,
  # lowered with XLA's convolutions in a JAX_PLATFORMS=cpu process, gives the same FLOPs as
  # lowering it here under conv_impl("xla") (and not the CPU formulations' count).
  from jaxdl.layers import conv as conv_lib
  bench = tool("bench_gpu")
  args = ("densenet121", 2, "f32", False, True)
  remote = bench._cpu_flops(*args)
  with conv_lib.conv_impl("xla"):
    local = bench.jax_train_step(*args, flops_only=True)
  assert remote > 0 and remote == local


def test_timing_waits_for_the_gpu_lock(tmp_path, monkeypatch, tool):
  # BENCH_GPU_LOCK: a row compiles and warms up at once but times only while it holds the
  # lock, so processes sharing a GPU (and a training run holding the lock) time one by one.
  import fcntl
  import threading
  bench = tool("bench_gpu")
  lock = tmp_path / "gpu.lock"
  monkeypatch.setenv("BENCH_GPU_LOCK", str(lock))
  calls = []
  result = []
  with open(lock, "a") as held:
    fcntl.flock(held, fcntl.LOCK_EX)
    t = threading.Thread(target=lambda: result.append(
        bench._median_time(lambda: calls.append(1) or 0, repeats=2, steps=3)))
    t.start()
    t.join(timeout=1.0)
    assert t.is_alive() and len(calls) == 1  # warmed up, then blocked on the lock
  t.join(timeout=30)
  assert not t.is_alive() and len(calls) == 1 + 2 * 3 and result[0] >= 0
