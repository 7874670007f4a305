"""Accelerator throughput in one run: jaxdl vs timm/PyTorch train steps, MFU, kernels vs XLA.

  PYTHONPATH=. python tools/bench_gpu.py                       # on the GPU: BENCHMARKS.md table
  PYTHONPATH=. python tools/bench_gpu.py --json /tmp/gpu.json  # + machine-readable results
  PYTHONPATH=. python tools/bench_gpu.py --smoke               # CPU: tiny sizes, seconds (CI)

Sections (all in one process, one table):
1. Peak: the measured bf16 matmul rate (jit(a @ b), square bf16, float32 accumulation),
   the denominator of every MFU below (measured after the other sections, listed first).
2. jaxdl train steps (forward + backward + SGD-momentum, BatchNorm in training mode, random
   data, donated state) for densenet121, densenet_bc_100_k12, rdnet_tiny, resnet50 in float32
   and in bf16 (dtype=bfloat16: bf16 compute, float32 parameters and statistics), each
   without and, where a kernel applies (DenseNets: the dense-layer bottleneck,
   jaxdl/kernels/dense_bottleneck.py, the model option bottleneck_impl="auto"), with the
   Pallas kernels (on CPU "auto" is XLA). Reported: images/s, peak
   device memory (`memory_stats()["peak_bytes_in_use"]`, reset between rows is not possible
   in JAX, so rows run in order of increasing memory and the peak is the running max;
   run one row per process with --models/--configs for exact numbers), and
   MFU = XLA's cost-analysis FLOPs per step / step time / section 1's peak. With
   --steps-per-call K each configuration gets a second row: K steps per compiled call
   (`lax.scan`, as `--config.steps_per_call=K` trains), per step; vs_base is its speed-up.
   `--xla-option NAME=VALUE` (repeatable) compiles these rows with XLA options (per
   compilation, not process-wide), e.g. xla_gpu_enable_cudnn_layer_norm=true, and
   `--model-option NAME=VALUE` builds the models with more constructor arguments, e.g.
   norm_fast_variance=true (RDNet).
3. timm/PyTorch (when `import torch, timm` works in this interpreter, else skipped): eager
   float32, eager bf16 autocast + channels_last, torch.compile bf16 autocast +
   channels_last; images/s and `torch.cuda.max_memory_allocated`.
4. Kernel microbenchmarks, forward + backward, each against its XLA version on the shapes
   of its model: dense bottleneck (DenseNet-121 block 1 last layer), prototype distance +
   min-pool (ProtoPNet, 14x14 maps, 2000 prototypes), PFN context attention (xla vs
   jax.nn.dot_product_attention/cuDNN vs the portable Pallas kernel).

Environment: BENCH_GPU_LOCK=<path> makes every timed section (each row after its warm-up and
compilation, and the matmul peak) hold an exclusive `flock` on that file while it times:
several benchmark processes and a training run (`flock <path> python -m jaxdl.train ...`)
can then compile side by side on one GPU and still be timed one at a time, each alone on
the GPU. The peak is measured after the rows for that reason (a process compiles first).

Timing: one warm-up call (compile excluded), then `--repeats` timed calls of `--steps`
steps each; medians. Configurations are timed in turns when several share a model, so load
from other processes hits them alike. With --smoke everything is tiny, the kernels run in
interpret mode and the numbers mean nothing: it only checks that the script works.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

MODELS = ("densenet121", "densenet_bc_100_k12", "rdnet_tiny", "resnet50")
RES = {"densenet_bc_100_k12": 32}
NUM_CLASSES = {"densenet_bc_100_k12": 10}
# --smoke: tiny variants of the same families.
SMOKE_OVERRIDES = {
    "densenet121": dict(growth_rate=32, block_config=(2,), num_classes=10),
    "densenet_bc_100_k12": dict(growth_rate=12, block_config=(2,), num_classes=10),
    "rdnet_tiny": dict(num_init_features=16, growth_rates=(8, 16), num_blocks_list=(1, 1),
                       is_downsample_block=(False, True), block_types=("Block", "BlockESE"),
                       num_classes=10),
    "resnet50": dict(stage_sizes=(1, 1), num_classes=10),
}


@contextlib.contextmanager
def gpu_lock(path=None):
  """Hold an exclusive flock on `path` (default: $BENCH_GPU_LOCK; none: no lock)."""
  path = path or os.environ.get("BENCH_GPU_LOCK")
  if not path:
    yield
    return
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)  # released when f closes
    yield


def _median_time(fn, repeats, steps):
  fn()  # warm-up (compilation excluded)
  times = []
  with gpu_lock():
    for _ in range(repeats):
      t0 = time.perf_counter()
      for _ in range(steps):
        out = fn()
      jax.block_until_ready(out)
      times.append((time.perf_counter() - t0) / steps)
  return statistics.median(times)


def _peak_bytes():
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def _flops(compiled):
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan")))
  except Exception as e:  # some backends have no cost analysis
    print(f"  note: no cost analysis ({type(e).__name__}: {e})", file=sys.stderr)
    return float("nan")


def _cpu_flops(name, batch, dtype, kernels, smoke):
  """FLOPs of the same train step lowered in a CPU-only process (no compilation).

  jax 0.11.2 on the H100 and H200 gave no cost analysis for the GPU lowering, nor for a
  CPU lowering made in the GPU process (MFU nan on 2026-12-04): a separate process with
  JAX_PLATFORMS=cpu sees only the CPU backend.
  """
  import subprocess
  cmd = [sys.executable, str(Path(__file__).resolve()), "--flops-of", name, str(batch), dtype,
         str(int(kernels))] + (["--smoke"] if smoke else [])
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  try:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=True)
    return float(out.stdout.strip().splitlines()[-1])
  except (subprocess.SubprocessError, ValueError, IndexError) as e:
    print(f"  note: CPU FLOP count failed ({type(e).__name__})", file=sys.stderr)
    return float("nan")


# ---- 1. bf16 matmul peak ------------------------------------------------------------------

def matmul_peak(n, repeats):
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  t = _median_time(lambda: f(a, b), repeats, 10)
  return 2.0 * n ** 3 / t


# ---- 2. jaxdl train steps -----------------------------------------------------------------

def build_train_step(name, dtype, kernels, smoke, model_options=None):
  """(model, step, tx, resolution, num_classes) of one jaxdl configuration, nothing compiled.

  model_options: more constructor arguments of the model (`--model-option`).

  step(variables, opt_state, x, y) -> (variables, opt_state): forward + backward + SGD
  momentum, BatchNorm in training mode. Shared with tools/gpu_aot.py (compiled there for a
  GPU target without a GPU).
  """
  import jaxdl.models as models
  overrides = dict(SMOKE_OVERRIDES[name]) if smoke else {}
  if dtype == "bf16":
    overrides["dtype"] = jnp.bfloat16
  if kernels:  # The DenseNet bottleneck kernel through the model option.
    overrides["bottleneck_impl"] = "auto"
  overrides.update(model_options or {})
  model = models.create(name, **overrides)
  res = 32 if smoke else RES.get(name, 224)
  num_classes = overrides.get("num_classes", NUM_CLASSES.get(name, 1000))
  tx = optax.sgd(0.01, momentum=0.9)

  def step(variables, opt_state, x, y):
    def loss_fn(p):
      logits, new = model.apply({**variables, "params": p}, x, train=True,
                                mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
    (_, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    updates, opt_state = tx.update(grads, opt_state, variables["params"])
    return {"params": optax.apply_updates(variables["params"], updates), **new}, opt_state

  return model, step, tx, res, num_classes


def jit_train_steps(step):
  """jit of `step` run over K stacked batches per call: (variables, opt_state), xs [K, ...],
  ys [K, ...] -> (variables, opt_state), the carry donated (jaxdl.train.loop.make_train_steps,
  as `--config.steps_per_call` trains). Shared with tools/gpu_aot.py."""
  from jaxdl.train.loop import make_train_steps
  multi = make_train_steps(lambda c, xy: (step(*c, *xy), None))
  return jax.jit(lambda c, xs, ys: multi(c, (xs, ys))[0], donate_argnums=0)


def jax_train_step(name, batch, dtype, kernels, smoke, flops_only=False, steps_per_call=1,
                   compiler_options=None, model_options=None):
  """(run() -> state, flops per step, compile seconds) for one jaxdl configuration.

  flops_only: return the FLOPs of the lowered step alone (no compilation).
  steps_per_call > 1: one call of run() takes that many steps (`lax.scan` over stacked copies
  of the batch, jaxdl.train.loop.make_train_steps, as `--config.steps_per_call` trains).
  compiler_options: XLA options for this compilation alone (`--xla-option`).
  model_options: more constructor arguments of the model (`--model-option`).
  """
  model, step, tx, res, num_classes = build_train_step(name, dtype, kernels, smoke,
                                                       model_options)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, res, res, 3), dtype=np.float32))
  y = jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)
  # Initialize on the host: on a GPU, jitting init would autotune every forward convolution
  # (minutes for densenet121) for a function that runs once.
  with jax.default_device(jax.devices("cpu")[0]):
    v = jax.jit(model.init)(jax.random.key(0), np.asarray(x[:1]))
  variables = jax.device_put({k: v[k] for k in ("params", "batch_stats") if k in v},
                             jax.devices()[0])
  opt_state = tx.init(variables["params"])
  jitted = jax.jit(step, donate_argnums=(0, 1))
  lowered = jitted.lower(variables, opt_state, x, y)
  if steps_per_call > 1 and not flops_only:
    xs, ys = (jnp.stack([a] * steps_per_call) for a in (x, y))
    multi_jitted = jit_train_steps(step)
  # FLOPs from the lowered HLO, not the compiled executable: on GPU the latter counts cuDNN
  # convolutions (custom calls) as zero. jax 0.11.2 on the H100 gave no cost analysis for the
  # GPU lowering at all, so fall back to lowering the same step in a CPU-only process.
  flops = _flops(lowered)
  if flops_only:
    return flops
  if not np.isfinite(flops):
    flops = _cpu_flops(name, batch, dtype, kernels, smoke)
  t0 = time.perf_counter()
  carry = [variables, opt_state]
  if steps_per_call > 1:
    compiled = multi_jitted.lower((variables, opt_state), xs, ys).compile(compiler_options)

    def run():
      carry[:] = compiled(tuple(carry), xs, ys)
      return carry[0]
  else:
    compiled = lowered.compile(compiler_options)

    def run():
      carry[0], carry[1] = compiled(carry[0], carry[1], x, y)
      return carry[0]
  return run, flops, time.perf_counter() - t0


def parse_options(items, flag="--xla-option", prefix="xla_"):
  """["name=value", ...] -> {name: value}, or None: XLA's compiler_options for one
  compilation (`--xla-option`) or a model's constructor arguments (`--model-option`).

  true / false become Python booleans, integers ints, other numbers floats and (...) / [...]
  tuples / lists: XLA rejects the strings for its boolean and integer options.
  """
  options = {}
  for item in items or ():
    key, sep, value = item.partition("=")
    if not sep or not key.startswith(prefix):
      example = ("xla_gpu_enable_cudnn_layer_norm=true" if prefix else
                 "norm_fast_variance=true")
      raise SystemExit(f"{flag} {item!r}: give it as {prefix or ''}<name>=<value>, e.g. "
                       f"{example}")
    v = value.strip()
    if v.lower() in ("true", "false"):
      options[key] = v.lower() == "true"
    elif re.fullmatch(r"-?\d+", v):
      options[key] = int(v)
    elif re.fullmatch(r"-?(\d+\.\d*|\.\d+|\d+)([eE]-?\d+)?", v):
      options[key] = float(v)
    elif v[:1] in "([":
      import ast
      options[key] = ast.literal_eval(v)  # a tuple or list, e.g. block_config=(6,12)
    else:
      options[key] = value
  return options or None


def _kernel_applies(name):
  return name.startswith("densenet")


# ---- 3. timm / PyTorch ----------------------------------------------------------------------

TORCH_CONFIGS = {"eager_f32": ("eager f32", False, False, False),
                 "eager_bf16": ("eager bf16 autocast channels_last", True, True, False),
                 "compile_bf16": ("compile bf16 autocast channels_last", True, True, True)}


def torch_rows(names, batch_for, repeats, steps, smoke, which=tuple(TORCH_CONFIGS)):
  try:
    import timm
    import torch
  except ImportError:
    return [dict(section="torch", name="-", config="skipped: torch/timm not importable")]
  device = "cuda" if torch.cuda.is_available() else "cpu"
  rows = []
  configs = [TORCH_CONFIGS[c] for c in which
             if c != "compile_bf16" or device == "cuda" or not smoke]
  for name in names:
    for label, bf16, channels_last, compiled in configs:
      if smoke:
        model = timm.create_model("resnet18" if name == "resnet50" else "densenet121",
                                  pretrained=False, num_classes=10)
      elif name == "densenet_bc_100_k12":
        model = timm.models.densenet.DenseNet(growth_rate=12, block_config=(16, 16, 16),
                                              num_classes=10)
        model.features.conv0 = torch.nn.Conv2d(3, 24, 3, padding=1, bias=False)
        model.features.norm0 = torch.nn.Identity()
        model.features.pool0 = torch.nn.Identity()
      else:
        model = timm.create_model(name, pretrained=False)
      model = model.to(device).train()
      res = 32 if smoke else RES.get(name, 224)
      b = batch_for(name)
      x = torch.randn(b, 3, res, res, device=device)
      y = torch.randint(0, 10, (b,), device=device)
      if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
      opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
      fwd = torch.compile(model) if compiled else model

      def run():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
          loss = torch.nn.functional.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()
        return loss

      if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
      run()
      times = []
      with gpu_lock():
        for _ in range(repeats):
          if device == "cuda":
            torch.cuda.synchronize()
          t0 = time.perf_counter()
          for _ in range(steps):
            run()
          if device == "cuda":
            torch.cuda.synchronize()
          times.append((time.perf_counter() - t0) / steps)
      t = statistics.median(times)
      peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
      rows.append(dict(section="torch", name=name, config=label, images_per_s=b / t,
                       ms=1e3 * t, peak_mib=None if peak is None else peak / 2 ** 20))
      print(f"  done: torch {name} {label} {b / t:.1f} img/s", file=sys.stderr, flush=True)
  return rows


# ---- 4. kernel microbenchmarks ------------------------------------------------------------

def kernel_rows(repeats, steps, smoke):
  from jaxdl.kernels import attention, dense_bottleneck, prototype_distance
  interpret = smoke and jax.default_backend() == "cpu"
  key = jax.random.key(0)
  rows = []

  def timed(label, shape_note, fns):
    base = None
    for impl, f in fns:
      try:
        t = _median_time(f, repeats, steps)
      except Exception as e:  # a kernel that does not lower here: say why, keep going
        rows.append(dict(section="kernel", name=label, config=f"{impl}: {type(e).__name__}",
                         note=str(e).split("\n")[0][:80]))
        continue
      base = t if impl == "xla" else base
      rows.append(dict(section="kernel", name=label, config=f"{impl} ({shape_note})",
                       ms=1e3 * t, vs_xla=None if base is None else base / t))

  # Dense bottleneck: DenseNet-121 block 1, layer 6 (64 + 5 * 32 channels -> 128), 56x56.
  n, hw = (1, 8) if smoke else (64, 56)
  sizes = [64] + [32] * 5
  xs = tuple(jax.random.normal(jax.random.fold_in(key, i), (n, hw, hw, c), jnp.bfloat16)
             for i, c in enumerate(sizes))
  scale, shift = jnp.ones(sum(sizes)), jnp.zeros(sum(sizes))
  w = (jax.random.normal(key, (sum(sizes), 128)) / 15).astype(jnp.bfloat16)
  impls = ["xla", "mosaic_gpu" if jax.default_backend() == "gpu" else "pallas"]

  def db_fn(impl):
    g = jax.jit(jax.grad(lambda xs, w: dense_bottleneck.dense_bottleneck(
        xs, scale, shift, w, impl=impl, interpret=interpret).astype(jnp.float32).sum(),
        argnums=(0, 1)))
    return lambda: g(xs, w)
  timed("dense_bottleneck fwd+bwd", f"{n}x{hw}x{hw}, 224->128 bf16",
        [(i, db_fn(i)) for i in impls])

  # Prototype distance + min-pool: ProtoPNet, 14x14 maps, 2000 prototypes of 128.
  n, hw, p = (2, 16, 64) if smoke else (80, 196, 2000)
  z = jax.random.uniform(key, (n, hw, 128))
  pr = jax.random.uniform(jax.random.key(1), (p, 128))

  def pd_fn(impl):
    g = jax.jit(jax.grad(lambda z, p: prototype_distance.prototype_min_distance(
        z, p, impl=impl, interpret=interpret)[0].sum(), argnums=(0, 1)))
    return lambda: g(z, pr)
  timed("prototype_min_distance fwd+bwd", f"{n}x{hw}x128, P={p} f32",
        [(i, pd_fn(i)) for i in ("xla", "pallas")])
  z, pr = z.astype(jnp.bfloat16), pr.astype(jnp.bfloat16)  # the Mosaic GPU kernel: bf16
  timed("prototype_min_distance fwd+bwd", f"{n}x{hw}x128, P={p} bf16",
        [(i, pd_fn(i)) for i in ("xla", "mosaic_gpu")])

  # PFN context attention: 64 datasets of 1024 rows (smoke: 2 of 16), 4 heads of 64.
  b, t, h, d = (2, 16, 2, 16) if smoke else (64, 1024, 4, 64)
  q, k, v = (jax.random.normal(jax.random.fold_in(key, i), (b, t, h, d), jnp.bfloat16)
             for i in range(3))
  nc = jnp.full((b,), t // 2, jnp.int32)

  def at_fn(impl):
    g = jax.jit(jax.grad(lambda q, k, v: attention.context_attention(
        q, k, v, nc, impl=impl, interpret=interpret).astype(jnp.float32).sum(),
        argnums=(0, 1, 2)))
    return lambda: g(q, k, v)
  timed("context_attention fwd+bwd", f"B={b} T={t} H={h} D={d} bf16",
        [(i, at_fn(i)) for i in ("xla", "dpa", "pallas")])
  return rows


# ---- main ---------------------------------------------------------------------------------

def _fmt(v, spec):
  width = int(spec.split(".")[0] or 0)
  if v is None or (isinstance(v, float) and not np.isfinite(v)):
    return "-".rjust(width)
  return format(v, spec)


def print_table(rows, peak):
  print(f"\nbackend {jax.default_backend()} ({jax.devices()[0].device_kind}); "
        f"measured bf16 matmul peak {peak / 1e12:.2f} TFLOP/s")
  print(f"| {'section':7} | {'model / kernel':32} | {'config':44} | {'img/s':>9} | "
        f"{'ms':>9} | {'peak MiB':>8} | {'MFU':>6} | {'vs base':>7} |")
  print("|" + "|".join("-" * w for w in (9, 34, 46, 11, 11, 10, 8, 9)) + "|")
  for r in rows:
    print(f"| {r['section']:7} | {r['name']:32} | {r['config'][:44]:44} | "
          f"{_fmt(r.get('images_per_s'), '9.1f')} | {_fmt(r.get('ms'), '9.3f')} | "
          f"{_fmt(r.get('peak_mib'), '8.0f')} | {_fmt(r.get('mfu'), '6.1%')} | "
          f"{_fmt(r.get('vs_xla', r.get('vs_base')), '7.2f')} |")
    if r.get("note"):
      print(f"|         |   note: {r['note']}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (CI check)")
  parser.add_argument("--models", nargs="+", default=list(MODELS))
  parser.add_argument("--configs", nargs="+",
                      default=["f32", "bf16", "f32+kernels", "bf16+kernels"])
  parser.add_argument("--torch-configs", nargs="+", default=list(TORCH_CONFIGS),
                      choices=list(TORCH_CONFIGS))
  parser.add_argument("--batch", type=int, default=64, help="224x224 models")
  parser.add_argument("--cifar-batch", type=int, default=256, help="32x32 models")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
  parser.add_argument("--matmul-size", type=int, default=8192)
  parser.add_argument("--skip", nargs="*", default=[], choices=["jax", "torch", "kernels"])
  parser.add_argument("--json", type=Path, help="also write the rows here")
  parser.add_argument("--steps-per-call", type=int, default=1, metavar="K",
                      help="K > 1: also time each jaxdl configuration K train steps per "
                           "compiled call (config.steps_per_call), per step")
  parser.add_argument("--xla-option", action="append", metavar="NAME=VALUE",
                      help="an XLA option for the jaxdl rows' compilations alone (repeatable), "
                           "e.g. xla_gpu_enable_cudnn_layer_norm=true")
  parser.add_argument("--model-option", action="append", metavar="NAME=VALUE",
                      help="a constructor argument of the jaxdl models (repeatable), e.g. "
                           "norm_fast_variance=true for RDNet")
  parser.add_argument("--flops-of", nargs=4, metavar=("MODEL", "BATCH", "DTYPE", "KERNELS"),
                      help=argparse.SUPPRESS)  # internal: print one train step's FLOPs
  args = parser.parse_args(argv)
  xla_options = parse_options(args.xla_option)
  model_options = parse_options(args.model_option, "--model-option", "")
  if args.flops_of:
    from jaxdl.layers import conv as conv_lib
    name, batch, dtype, kernels = args.flops_of
    with conv_lib.conv_impl("xla"):  # the accelerator's convolutions, not the CPU's forms
      print(jax_train_step(name, int(batch), dtype, bool(int(kernels)), args.smoke,
                           flops_only=True))
    return []
  if args.smoke:
    args.batch = args.cifar_batch = 2
    args.repeats, args.steps, args.matmul_size = 2, 1, 256

  def batch_for(name):
    return args.cifar_batch if (name in RES and not args.smoke) else args.batch

  rows = []
  if "jax" not in args.skip:
    for name in args.models:
      base = {}
      for cfg in args.configs:
        dtype = "bf16" if cfg.startswith("bf16") else "f32"
        kernels = cfg.endswith("+kernels")
        if kernels and not _kernel_applies(name):
          continue
        b = batch_for(name)
        for k in sorted({1, args.steps_per_call}):
          run, flops, compile_s = jax_train_step(name, b, dtype, kernels, args.smoke,
                                                 steps_per_call=k,
                                                 compiler_options=xla_options,
                                                 model_options=model_options)
          t = _median_time(run, args.repeats, max(1, args.steps // k)) / k  # per step
          mem = _peak_bytes()
          base.setdefault(dtype, t)
          label = (f"train {cfg} batch {b}" + (f" {k} steps/call" if k > 1 else "")
                   + "".join(f" {o}={v}" for o, v in {**(xla_options or {}),
                                                       **(model_options or {})}.items()))
          rows.append(dict(section="jaxdl", name=name, config=label, images_per_s=b / t,
                           ms=1e3 * t, peak_mib=None if mem is None else mem / 2 ** 20,
                           flops=flops, vs_base=base[dtype] / t, compile_s=compile_s,
                           xla_flags=os.environ.get("XLA_FLAGS", ""), steps_per_call=k,
                           xla_options=xla_options, model_options=model_options))
          print(f"  done: {label}: {b / t:.1f} img/s, {1e3 * t:.2f} ms, "
                f"{flops / t / 1e12:.1f} TFLOP/s, compile {compile_s:.0f} s", file=sys.stderr,
                flush=True)
          _write_json(args.json, None, rows)  # after every row: a timeout keeps what ran
  if "torch" not in args.skip:
    rows += torch_rows(args.models, batch_for, args.repeats, args.steps, args.smoke,
                       args.torch_configs)
    _write_json(args.json, None, rows)
  if "kernels" not in args.skip:
    rows += kernel_rows(args.repeats, args.steps, args.smoke)
  # The peak last: with BENCH_GPU_LOCK, the rows' compilation must not wait for the lock.
  peak = matmul_peak(args.matmul_size, args.repeats)
  for r in rows:
    if "flops" in r:
      r["mfu"] = r["flops"] / (r["ms"] / 1e3) / peak
  rows.insert(0, dict(section="peak", name="bf16 matmul", config=f"{args.matmul_size}^3",
                      ms=2e3 * args.matmul_size ** 3 / peak, note=f"{peak / 1e12:.2f} TFLOP/s"))
  print_table(rows, peak)
  _write_json(args.json, peak, rows)
  return rows


def _write_json(path, peak, rows):
  if path:
    path.write_text(json.dumps(dict(backend=jax.default_backend(),
                                    device=jax.devices()[0].device_kind,
                                    bf16_matmul_peak_flops=peak, rows=rows), indent=1))


if __name__ == "__main__":
  main()
