"""Compile jaxdl's GPU train steps on a machine without a GPU (XLA:GPU deviceless AOT).

  python tools/gpu_aot.py --model rdnet_tiny --dtype bf16 --batch 64
  python tools/gpu_aot.py --model rdnet_tiny --dtype bf16 \
      --xla-option xla_gpu_enable_cudnn_layer_norm=true      # one compilation's XLA options
  python tools/gpu_aot.py --model rdnet_tiny --model-option norm_fast_variance=true
  python tools/gpu_aot.py --model densenet121 --dtype bf16 --kernels   # the Pallas kernels
  python tools/gpu_aot.py --kernels-only          # each Pallas kernel alone (fwd + bwd)

It compiles the train step of tools/bench_gpu.py (forward + backward + SGD momentum,
BatchNorm in training mode) for an H100 or H200 described by a target config (no device, no
driver) and prints the compile time, the time of each XLA pass (the slowest first), the
fusions of the compiled module and XLA's buffer sizes. That is XLA:GPU's whole pipeline:
HLO passes, fusion, Triton / LLVM / ptxas code generation; what it cannot do without a GPU
is autotune (XLA then takes its default algorithms; on a GPU, `--xla_gpu_autotune_level=2`
adds the autotuning time) or run anything. So it answers "does this compile for the GPU,
how long does XLA take and where, which fusions does it make" in a session without one.

Needs jax's CUDA plugin for the installed jax version in the interpreter, e.g. a venv
beside the project's (about 4 GB; never in CI):

  python -m venv /tmp/gpuvenv && /tmp/gpuvenv/bin/pip install "jax[cuda13]==$(python -c \
      'import jax; print(jax.__version__)')" && /tmp/gpuvenv/bin/pip install -e .

The plugin's start-up check of CUDA library versions loads CUPTI, which fails without a
driver; this tool sets JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 to skip it (only the check).
The model code picks its GPU paths at trace time: the convolutions (`conv_impl("xla")`)
and, with --kernels, the Pallas kernels (`jax.default_backend()` reads "gpu" while the
step is traced in this process).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_gpu, beside this file

# Device descriptions (`stream_executor::GpuTargetConfigProto`). Numbers from the machines the
# GPU sessions had (BENCHMARKS.md "Accelerator throughput"): 132 SMs, 50 MiB L2, 228 KiB
# shared memory per SM.
TARGETS = {
    "h100": dict(description="NVIDIA H100 80GB HBM3", memory_bytes=85_520_809_984,
                 bandwidth=3_352_320_000_000, clock_ghz=1.98),
    "h200": dict(description="NVIDIA H200", memory_bytes=150_754_820_096,
                 bandwidth=4_800_000_000_000, clock_ghz=1.98),
}

_PASS_LINE = re.compile(r"HLO pass: (\S+) time: ([\d.]+) (us|ms|s|min) \(")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}


def _version(package, default):
  """(major, minor, patch) of an installed package, or `default`."""
  try:
    parts = [int(p) for p in re.findall(r"\d+", metadata.version(package))[:3]]
  except metadata.PackageNotFoundError:
    return default
  return tuple(parts + [0] * (3 - len(parts)))


def target_config(name: str) -> str:
  """The text proto of a GpuTargetConfigProto for TARGETS[name] (Hopper, sm_90).

  cuDNN and CUDA runtime versions are those of the installed NVIDIA wheels (the plugin's),
  else 9.8.0 / 13.0.0.
  """
  t = TARGETS[name]
  dnn = _version("nvidia-cudnn-cu13", (9, 8, 0))
  runtime = _version("nvidia-cuda-runtime", (13, 0, 0))
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {t['bandwidth']}
  l2_cache_size: 52428800
  clock_rate_ghz: {t['clock_ghz']}
  device_memory_size: {t['memory_bytes']}
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 minor: 0 }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: {dnn[0]} minor: {dnn[1]} patch: {dnn[2]} }}
runtime_version {{ major: {runtime[0]} minor: {runtime[1]} patch: {runtime[2]} }}
device_description_str: "{t['description']}"
"""


def pass_times(log_text: str) -> collections.Counter:
  """Seconds per HLO pass name, summed over every run of it, from XLA's pass-pipeline log
  (TF_CPP_VMODULE=hlo_pass_pipeline=1: one "HLO pass: <name> time: <t> <unit> (...)" line
  per run)."""
  totals = collections.Counter()
  for m in _PASS_LINE.finditer(log_text):
    totals[m.group(1)] += float(m.group(2)) * _UNITS[m.group(3)]
  return totals


def fusion_kinds(hlo_text: str) -> collections.Counter:
  """Fusions of an optimized HLO module by kind (kLoop, kInput, ..., Triton's `__triton*`
  kinds by name) and its library calls (cuDNN / cuBLAS custom calls by target)."""
  counts = collections.Counter()
  for line in hlo_text.splitlines():
    if " fusion(" in line:
      triton = re.search(r'"kind":"(__triton[\w]*)"', line)
      kind = re.search(r"kind=(k\w+)", line)
      counts[triton.group(1) if triton else (kind.group(1) if kind else "fusion")] += 1
    call = re.search(r'custom_call_target="([^"]+)"', line)
    if call and " custom-call(" in line:
      counts[call.group(1)] += 1
  return counts


@contextlib.contextmanager
def _stderr_to(path):
  """Send file descriptor 2 (where XLA's C++ logging goes) to `path` within the block."""
  sys.stderr.flush()
  saved = os.dup(2)
  with open(path, "wb") as f:
    os.dup2(f.fileno(), 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


@contextlib.contextmanager
def _gpu_backend_for_tracing(jax):
  """jax.default_backend() reads "gpu" within the block: the model code's kernel choices."""
  real = jax.default_backend
  jax.default_backend = lambda: "gpu"
  try:
    yield
  finally:
    jax.default_backend = real


def compile_step(model, dtype="bf16", batch=64, kernels=False, target="h200",
                 compiler_options=None, smoke=False, model_options=None, steps_per_call=1):
  """Lower and compile one train step for `target` without a device.

  steps_per_call > 1: that many steps per call (`lax.scan` over stacked batches, as
  `--config.steps_per_call` trains). Returns dict(compile_s, lower_s, hlo (optimized module
  text), memory (XLA's buffer sizes or None)).
  """
  import jax
  import jax.numpy as jnp
  from jax.experimental import topologies

  from bench_gpu import build_train_step, jit_train_steps
  from jaxdl.layers import conv as conv_lib

  try:
    topology = topologies.get_topology_desc(platform="cuda", target_config=target_config(target),
                                            topology="1x1x1")
  except (NotImplementedError, RuntimeError) as e:
    raise SystemExit(f"no XLA:GPU compiler in this interpreter ({str(e).splitlines()[0]}): "
                     "install jax's CUDA plugin for this jax version (see this tool's "
                     "docstring).") from None
  sharding = jax.sharding.SingleDeviceSharding(topology.devices[0])

  def abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        tree)

  t0 = time.perf_counter()
  with conv_lib.conv_impl("xla"), _gpu_backend_for_tracing(jax):
    net, step, tx, res, num_classes = build_train_step(model, dtype, kernels, smoke,
                                                       model_options)
    v = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, res, res, 3)))
    variables = abstract({k: v[k] for k in ("params", "batch_stats") if k in v})
    opt_state = abstract(jax.eval_shape(tx.init, variables["params"]))
    k = (steps_per_call,) if steps_per_call > 1 else ()
    x = jax.ShapeDtypeStruct(k + (batch, res, res, 3), jnp.float32, sharding=sharding)
    y = jax.ShapeDtypeStruct(k + (batch,), jnp.int32, sharding=sharding)
    if steps_per_call > 1:
      lowered = jit_train_steps(step).lower((variables, opt_state), x, y)
    else:
      lowered = jax.jit(step, donate_argnums=(0, 1)).lower(variables, opt_state, x, y)
  lower_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile(compiler_options)
  compile_s = time.perf_counter() - t0
  try:
    memory = compiled.memory_analysis()
  except Exception:  # not every XLA gives one for a compile-only device
    memory = None
  return dict(compile_s=compile_s, lower_s=lower_s, hlo=compiled.as_text(), memory=memory)


def _kernel_cases():
  """{label: (fn, abstract args)}: forward + backward of each Pallas kernel implementation
  that runs on a GPU, at one shape of its model (tools/gpu_check.py checks the same
  implementations' numbers on a device)."""
  import jax
  import jax.numpy as jnp

  from jaxdl.kernels import attention as at
  from jaxdl.kernels import dense_bottleneck as db
  from jaxdl.kernels import prototype_distance as pd
  bf16, f32 = jnp.bfloat16, jnp.float32
  cases = {}
  # DenseNet-121 block 1, last layer: 6 inputs, 224 -> 128 channels, batch 64 at 56x56.
  sizes = [64] + [32] * 5
  xs = tuple(jax.ShapeDtypeStruct((64, 56, 56, c), bf16) for c in sizes)
  vec = jax.ShapeDtypeStruct((sum(sizes),), f32)
  w = jax.ShapeDtypeStruct((sum(sizes), 128), bf16)
  for impl in ("mosaic_gpu", "pallas"):
    def loss(xs, s, b, w, impl=impl):
      return jnp.sum(db.dense_bottleneck(xs, s, b, w, impl=impl, out_dtype=f32))
    cases[f"dense_bottleneck[{impl}] 64x56x56 {sizes}->128 bf16"] = (
        jax.value_and_grad(loss, argnums=(0, 1, 2, 3)), (xs, vec, vec, w))
  # ProtoPNet: 14x14 maps of 128 channels, 2000 prototypes, batch 80.
  z = jax.ShapeDtypeStruct((80, 196, 128), bf16)
  protos = jax.ShapeDtypeStruct((2000, 128), bf16)
  for impl in ("mosaic_gpu", "pallas"):
    def loss(z, p, impl=impl):
      return jnp.sum(pd.prototype_min_distance(z, p, metric="l2", impl=impl)[0])
    cases[f"prototype_min_distance[{impl}] 80x196x128 P=2000 bf16"] = (
        jax.value_and_grad(loss, argnums=(0, 1)), (z, protos))
  # PFN: 8 datasets of 1024 rows, 4 heads of 64.
  q = jax.ShapeDtypeStruct((8, 1024, 4, 64), bf16)
  nc = jax.ShapeDtypeStruct((8,), jnp.int32)
  for impl in ("pallas", "dpa"):
    def loss(q, k, v, nc, impl=impl):
      return jnp.sum(at.context_attention(q, k, v, nc, impl=impl).astype(f32))
    cases[f"context_attention[{impl}] B=8 T=1024 H=4 D=64 bf16"] = (
        jax.value_and_grad(loss, argnums=(0, 1, 2)), (q, q, q, nc))
  return cases


def compile_kernels(target="h200", select=None):
  """Compile each kernel case for `target` without a device: [(label, seconds or None,
  error line or None)]; a failure is reported and the next case still runs."""
  import jax
  from jax.experimental import topologies
  topology = topologies.get_topology_desc(platform="cuda", target_config=target_config(target),
                                          topology="1x1x1")
  sharding = jax.sharding.SingleDeviceSharding(topology.devices[0])
  rows = []
  with _gpu_backend_for_tracing(jax):
    cases = _kernel_cases()
    for label, (fn, args) in cases.items():
      if select and not any(label.startswith(k) for k in select):
        continue
      args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                          args)
      t0 = time.perf_counter()
      try:
        jax.jit(fn).lower(*args).compile()
        rows.append((label, time.perf_counter() - t0, None))
      except Exception as e:  # report and go on: one broken kernel must not hide the others
        rows.append((label, None, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="rdnet_tiny")
  parser.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--kernels", action="store_true",
                      help="the Pallas kernels where the model has them (bottleneck_impl=auto)")
  parser.add_argument("--target", choices=sorted(TARGETS), default="h200")
  parser.add_argument("--xla-option", action="append", metavar="NAME=VALUE",
                      help="an XLA option for this compilation (repeatable)")
  parser.add_argument("--model-option", action="append", metavar="NAME=VALUE",
                      help="a constructor argument of the model (repeatable), e.g. "
                           "norm_fast_variance=true")
  parser.add_argument("--passes", type=int, default=12, help="list the N slowest XLA passes")
  parser.add_argument("--log", type=Path, help="keep XLA's log here (default: a temp file)")
  parser.add_argument("--dump-hlo", type=Path, help="write the optimized HLO module here")
  parser.add_argument("--smoke", action="store_true", help="tiny variant of the model")
  parser.add_argument("--steps-per-call", type=int, default=1, metavar="K",
                      help="K train steps per compiled call (lax.scan), as the loop's "
                           "config.steps_per_call")
  parser.add_argument("--kernels-only", nargs="*", metavar="KERNEL",
                      help="compile the Pallas kernels' forward + backward instead of a model "
                           "(all, or those whose label starts with a KERNEL given)")
  args = parser.parse_args(argv)
  # Before jax is imported (bench_gpu imports it): XLA reads these when it starts.
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"  # the pass timings are INFO lines
  os.environ["TF_CPP_VMODULE"] = ",".join(
      filter(None, [os.environ.get("TF_CPP_VMODULE"), "hlo_pass_pipeline=1"]))
  from bench_gpu import parse_options
  options = parse_options(args.xla_option)
  model_options = parse_options(args.model_option, "--model-option", "")
  if args.kernels_only is not None:
    rows = compile_kernels(args.target, args.kernels_only)
    for label, sec, err in rows:
      print(f"ok   {label}: compiled in {sec:.1f} s" if err is None else
            f"FAIL {label}: {err}", flush=True)
    failed = sum(err is not None for _, _, err in rows)
    print(f"{failed} of {len(rows)} kernels failed to compile for {args.target}")
    return 1 if failed else 0
  log_path = args.log or Path(tempfile.mkstemp(prefix="gpu_aot_", suffix=".log")[1])
  with _stderr_to(log_path):
    result = compile_step(args.model, args.dtype, args.batch, args.kernels, args.target,
                          options, args.smoke, model_options, args.steps_per_call)
  log_text = log_path.read_text(errors="replace")
  if args.log is None:
    log_path.unlink()
  times = pass_times(log_text)
  label = (f"{args.model} {args.dtype} batch {args.batch}"
           + (" +kernels" if args.kernels else "")
           + (f" {args.steps_per_call} steps/call" if args.steps_per_call > 1 else "")
           + "".join(f" {k}={v}" for k, v in {**(options or {}),
                                               **(model_options or {})}.items()))
  print(f"{label}, target {args.target}: lowered in {result['lower_s']:.1f} s, compiled in "
        f"{result['compile_s']:.1f} s (no autotuning); XLA passes {sum(times.values()):.1f} s")
  for name, sec in times.most_common(args.passes):
    print(f"  {sec:8.2f} s  {name}")
  kinds = fusion_kinds(result["hlo"])
  print("fusions and library calls: "
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])))
  mem = result["memory"]
  if mem is not None:
    print(f"XLA buffers: temporaries {mem.temp_size_in_bytes / 2**20:,.0f} MiB, arguments "
          f"{mem.argument_size_in_bytes / 2**20:,.0f} MiB, outputs "
          f"{mem.output_size_in_bytes / 2**20:,.0f} MiB")
  if args.dump_hlo:
    args.dump_hlo.write_text(result["hlo"])
  return dict(result, passes=times, fusions=kinds)


if __name__ == "__main__":
  result = main()
  sys.exit(result if isinstance(result, int) else 0)
