"""tools/gpu_aot.py (XLA:GPU deviceless compilation) and the option parsing it shares with
tools/bench_gpu.py.

The compilation itself needs jax's CUDA plugin, which the test environment does not install
(~4 GB): that test skips without it. The rest runs everywhere.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# XLA's pass-pipeline log lines (TF_CPP_VMODULE=hlo_pass_pipeline=1), as XLA writes them.
LOG = """\
I1204 23:18:38.099754   12886 hlo_pass_pipeline.cc:181]   HLO pass priority-fusion
I1204 23:18:38.100009   12886 hlo_pass_pipeline.cc:176] HLO pass: priority-fusion time: \
255 us (255 us) (cumulative: 2.41 s, max: 326 ms, #called: 254)
I1204 23:20:34.177241   12886 hlo_pass_pipeline.cc:176] HLO pass: priority-fusion time: \
1.91 min (114672647 us) (cumulative: 1.98 min, max: 1.91 min, #called: 623)
I1204 23:20:35.000000   12886 hlo_pass_pipeline.cc:176] HLO pass: algsimp time: \
12.5 ms (12500 us) (cumulative: 1.98 min, max: 1.91 min, #called: 624)
I1204 23:20:36.000000   12886 hlo_pass_pipeline.cc:176] HLO pass: copy-insertion time: \
1.5 s (1500000 us) (cumulative: 1.99 min, max: 1.91 min, #called: 625)
"""

HLO = """\
  %fusion.1 = bf16[4,8,8,16]{3,2,1,0} fusion(%p0), kind=kLoop, calls=%fused_computation.1
  %fusion.2 = f32[16]{0} fusion(%p1), kind=kInput, calls=%fused_computation.2
  %fusion.3 = bf16[4,8,8,16]{3,2,1,0} fusion(%p0), kind=kCustom, calls=%c3, \
backend_config={"fusion_backend_config":{"kind":"__triton","block_level_fusion_config":{}}}
  %fusion.4 = bf16[4,8,8,16]{3,2,1,0} fusion(%p0), kind=kLoop, calls=%fused_computation.4
  %custom-call.1 = (bf16[4,8,8,16]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b), \
custom_call_target="__cudnn$convForward"
"""


def test_pass_times_sum_each_pass_over_its_runs(tool):
  times = tool("gpu_aot").pass_times(LOG)
  assert times["priority-fusion"] == pytest.approx(255e-6 + 1.91 * 60)
  assert times["algsimp"] == pytest.approx(12.5e-3)
  assert times["copy-insertion"] == pytest.approx(1.5)
  assert times.most_common(1)[0][0] == "priority-fusion"


def test_fusion_kinds_counts_fusions_and_library_calls(tool):
  kinds = tool("gpu_aot").fusion_kinds(HLO)
  assert kinds == {"kLoop": 2, "kInput": 1, "__triton": 1, "__cudnn$convForward": 1}


def test_target_config_describes_a_hopper_gpu(tool):
  text = tool("gpu_aot").target_config("h200")
  assert "cuda_compute_capability { major: 9 minor: 0 }" in text
  assert "device_memory_size: 150754820096" in text and '"NVIDIA H200"' in text
  assert 'platform_name: "CUDA"' in text and "dnn_version_info" in text


def test_options_are_typed_and_bad_ones_are_one_line_errors(tool):
  parse = tool("bench_gpu").parse_options
  assert parse(None) is None
  assert parse(["xla_gpu_enable_cudnn_layer_norm=true", "xla_gpu_autotune_level=2",
                "xla_x=1.5", "xla_y=some_text", "xla_z=False"]) == {
      "xla_gpu_enable_cudnn_layer_norm": True, "xla_gpu_autotune_level": 2, "xla_x": 1.5,
      "xla_y": "some_text", "xla_z": False}
  assert parse(["norm_fast_variance=true", "block_config=(6, 12)"], "--model-option", "") == {
      "norm_fast_variance": True, "block_config": (6, 12)}
  with pytest.raises(SystemExit, match="give it as xla_<name>=<value>"):
    parse(["gpu_enable=true"])
  with pytest.raises(SystemExit, match="--model-option 'norm_fast_variance'"):
    parse(["norm_fast_variance"], "--model-option", "")


def _has_cuda_plugin():
  if importlib.util.find_spec("jax_plugins") is None:
    return False
  return any(importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") is not None
             for v in (12, 13))


@pytest.mark.skipif(not _has_cuda_plugin(), reason="needs jax's CUDA plugin (not in CI)")
def test_deviceless_compile_of_a_small_rdnet():
  """The tool compiles a small RDNet's train step for an H200 without a GPU. The two-pass
  LayerNorm variance gives XLA Triton normalization fusions; the one-pass form
  (norm_fast_variance) leaves it fewer (what cuts the compile time)."""
  def run(*extra):
    cmd = [sys.executable, str(REPO / "tools" / "gpu_aot.py"), "--model", "rdnet_tiny",
           "--smoke", "--batch", "4", "--passes", "3", *extra]
    env = dict(os.environ)
    env.pop("JAX_PLATFORMS", None)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "target h200" in lines[0] and "compiled in" in lines[0]
    fusions = next(line for line in lines if line.startswith("fusions"))
    return dict((part.rsplit(" ", 1)[0], int(part.rsplit(" ", 1)[1]))
                for part in fusions.split(": ", 1)[1].split(", "))

  plain = run()
  fast = run("--model-option", "norm_fast_variance=true")
  assert plain["__triton"] > fast.get("__triton", 0)
  assert plain["__cudnn$convForward"] > 0  # the accelerator's convolutions, not the CPU's
  # Two steps per call (the loop's steps_per_call): the same convolutions, in a loop.
  assert run("--steps-per-call", "2")["__cudnn$convForward"] == plain["__cudnn$convForward"]


@pytest.mark.skipif(not _has_cuda_plugin(), reason="needs jax's CUDA plugin (not in CI)")
def test_every_gpu_kernel_path_compiles_for_an_h200():
  cmd = [sys.executable, str(REPO / "tools" / "gpu_aot.py"), "--kernels-only"]
  env = dict(os.environ)
  env.pop("JAX_PLATFORMS", None)
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
  assert out.returncode == 0, out.stdout[-3000:]
  lines = [line for line in out.stdout.splitlines() if line.startswith(("ok ", "FAIL"))]
  assert len(lines) == 6 and all(line.startswith("ok ") for line in lines), lines
