"""Train-step and inference throughput (images/s): jaxdl vs timm (PyTorch), same machine.

  PYTHONPATH=. python tools/bench_models.py                    # the BENCHMARKS.md table
  PYTHONPATH=. python tools/bench_models.py --models resnet50 --repeats 3 --train-batch 8
  PYTHONPATH=. python tools/bench_models.py --no-timm --variants no-scan   # in-process A/B

jaxdl runs in this process (jit-compiled, float32); timm runs in a worker process of the
PyTorch environment (--torch-python, default /work/torchvenv/bin/python; eager float32,
NCHW, `torch.inference_mode` for inference). For every model and mode the two are timed in
turns (jaxdl, timm, jaxdl, timm, ...) after one warm-up call each, so that load from other
processes on a shared machine hits both alike; the table reports medians and the ratio
jaxdl / timm (> 1: jaxdl faster), in brackets its range over the repeats (the ratio of the
two block medians in each repeat). Each turn is a block of --block consecutive calls of
which the first is not counted: the steady state of a training or inference loop. On this
2-core VM the first jaxdl call after a timm call or a few seconds idle ran up to 1.5x slower
than the calls after it (rdnet_tiny training: 4.3-5.0 s, then 3.3-3.7 s) and timm's first
call ~1.1x, so one call per turn (--block 1, what this tool did before 2026-12-03) measured
jaxdl's re-warm-up, not its throughput. Train step = forward + backward + SGD-momentum
update with BatchNorm in training mode. Compile time is excluded (reported separately).
The script re-executes itself once with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (transparent
huge pages, jaxdl/hugepages.py), which the timm worker inherits; JAXDL_HUGEPAGES=0 runs both
sides without.

--variants adds columns for jaxdl with one of its CPU formulations switched off (VARIANTS),
compiled in this process and timed in the same rotation: an A/B of that formulation inside
the whole model, immune to the VM's speed drifting between runs ("same" is the A/A control:
jaxdl compiled twice). The order of the calls is reversed every repeat. --no-timm leaves
timm out. --cpu-times adds each side's user and kernel CPU seconds per call: on the 2-core
development VM a call's kernel time (zeroing fresh pages, which the VM's host reclaims as
soon as they are freed) varies from 0.1 to 1.4 s while its user time stays within ~5%
(BENCHMARKS.md "RDNet training on CPU: CPU time, kernel time and memory").
--steps-per-call K adds a column for training K steps per compiled call (a lax.scan over K
batches, as `python -m jaxdl.train --config.steps_per_call=K` does), reported per step (the
call's seconds / K) and compared with timm's step.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
RES = {"densenet_bc_100_k12": 32}
NUM_CLASSES = {"densenet_bc_100_k12": 10}


# ---- timm worker (runs under the PyTorch interpreter; no jax import) ----------------------

def _timm_model(name):
  import timm
  import torch
  if name == "densenet_bc_100_k12":
    # timm has no CIFAR DenseNet: its DenseNet-BC with the paper's 3x3 stem, no stem BN/pool.
    model = timm.models.densenet.DenseNet(growth_rate=12, block_config=(16, 16, 16),
                                          num_classes=10)
    model.features.conv0 = torch.nn.Conv2d(3, 24, 3, padding=1, bias=False)
    model.features.norm0 = torch.nn.Identity()
    model.features.pool0 = torch.nn.Identity()
    return model
  return timm.create_model(name, pretrained=False)


def timm_runner(name, mode, batch):
  """(run, number of parameters): timm's eager train step or inference call on random data."""
  import torch
  model = _timm_model(name)
  res = RES.get(name, 224)
  x = torch.randn(batch, 3, res, res)
  y = torch.randint(0, NUM_CLASSES.get(name, 1000), (batch,))
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  model.train(mode == "train")

  def run():
    if mode == "train":
      opt.zero_grad(set_to_none=True)
      loss = torch.nn.functional.cross_entropy(model(x), y)
      loss.backward()
      opt.step()
    else:
      with torch.inference_mode():
        model(x)
  return run, sum(p.numel() for p in model.parameters())


def torch_worker():
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  state = {}
  for line in sys.stdin:
    cmd = json.loads(line)
    key = (cmd["model"], cmd["mode"], cmd["batch"])
    if key not in state:
      run, params = timm_runner(cmd["model"], cmd["mode"], cmd["batch"])
      t0 = time.perf_counter()
      run()  # warm-up
      state[key] = run
      print(json.dumps({"warmup_s": time.perf_counter() - t0, "params": params}), flush=True)
      continue
    seconds, user, kernel, _ = measure(state[key])
    print(json.dumps({"s": seconds, "user": user, "sys": kernel}), flush=True)


class TorchWorker:
  def __init__(self, python):
    self.proc = subprocess.Popen([python, __file__, "--torch-worker"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, cwd=REPO)

  def call(self, **cmd):
    self.proc.stdin.write(json.dumps(cmd) + "\n")
    self.proc.stdin.flush()
    while True:  # skip anything else the worker's imports print
      line = self.proc.stdout.readline()
      if not line:
        raise RuntimeError("the timm worker died; run it by hand to see why")
      if line.startswith("{"):
        return json.loads(line)

  def close(self):
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


# ---- jaxdl side ----------------------------------------------------------------------------

VARIANTS = {
    "same": "jaxdl itself, compiled a second time: the A/A control (its ratio is the noise)",
    "xla-conv": "every convolution and contraction left to XLA (conv_impl('xla'))",
    "no-conv-stride1": "dense stride-1 KxK convolutions left to XLA (no conv_stride1 VJP)",
    "no-scan": "backward passes over the whole batch at once, not a scan over image chunks "
               "(scan_batch_chunks: conv_stride1, depthwise and max-pool gradients)",
    "no-bn-vjp": "training-mode BatchNorm differentiated by autodiff (no batch_norm_train VJP)",
    "no-bn-relu-fusion": "the ReLU after a BatchNorm outside its VJP (autodiff's saved mask)",
    "bn-stored-center": "BatchNorm VJP without its fusable sums (XLA:CPU stores x - mean "
                        "for the variance and the backward's sum)",
    "dw-kgrad-whole": "depthwise kernel gradient as one reduction per tap over the whole "
                      "chunk of images, not a scan over blocks of rows",
    "dw-kgrad-per-tap": "depthwise kernel gradient as one reduction per tap in each block of "
                        "rows, not one variadic reduction of all taps",
    "dw-ynn-fusion": "RDNet's FeatureMixer without its loop_fusion_boundary calls: before "
                     "the LayerNorm (a YNNPACK fusion then stores every tap's slice of the "
                     "depthwise sum) and after it (the 1x1 dot joins the LN's fusion)",
    "ynn-default": "compiled with XLA:CPU's default YNNPACK fusions (dots and convolutions "
                   "too), not jaxdl.compiler's CPU options (reductions only)",
    "ynn-off": "compiled with XLA:CPU's YNNPACK fusions off (compiler option "
               "xla_cpu_experimental_ynn_fusion_type='': XLA's own dots and loops)",
    "gelu-erfc": "GELU as nn.gelu(approximate=False) (erfc form) instead of erf's",
    "dw-padded-dx": "stride-1 depthwise VJP on the padded input: its input gradient over "
                    "the padded positions, then cropped",
    "padded-tap-sums": "stride-1 tap sums (DenseNet's 3x3 forward) with each tap's term "
                       "padded to the output, not summed region by region as plain slices",
    "pool-no-scan": "max-pool backward over the whole batch at once, not a scan over chunks "
                    "of images (scan_batch_chunks)",
    "no-dense-stats": "DenseNet layers' norm1 over each layer's stored concatenation, not "
                      "the feature maps' shared batch statistics (concat_normalize_relu)",
    "dw-kgrad-one-reduce": "depthwise kernel gradient as one variadic reduction of all taps "
                           "per block of rows, not one per group of <= 16 taps",
    "dw-recomputed": "RDNet's FeatureMixer without compute_once after its depthwise sum "
                     "(XLA:CPU then recomputes the sum inside the LayerNorm's loops)",
    "gelu-stored": "RDNet's FeatureMixer storing its GELU output for the backward pass "
                   "(the 1x1 conv's input), not recomputing it from the GELU's input",
    "scan-outputs": "chunk loops (scan_batch_chunks) with lax.scan's own output buffers, "
                    "which XLA:CPU may allocate at the start of the step, not buffers "
                    "created from the loop's last operand",
    "no-links": "memory-efficient dense blocks without accumulate_here links (XLA then "
                "sums each feature map's cotangent in one late fusion)",
}


# Variants that set a module's formulation setting to another value: (module, name[, value
# (default False)]).
FLAGS_OFF = {
    "bn-stored-center": ("jaxdl.layers.norm", "_FUSABLE_SUMS"),
    "dw-padded-dx": ("jaxdl.layers.conv", "_DW_UNPADDED_DX"),
    "padded-tap-sums": ("jaxdl.layers.conv", "_REGION_SUMS"),
    "pool-no-scan": ("jaxdl.layers.pool", "_SCAN_CHUNKS"),
    "no-dense-stats": ("jaxdl.models.densenet", "_CACHE_STATS"),
    "dw-kgrad-one-reduce": ("jaxdl.layers.conv", "_TAPS_PER_REDUCE", 10**9),
    "gelu-stored": ("jaxdl.models.rdnet", "_RECOMPUTE_GELU"),
    "dw-recomputed": ("jaxdl.models.rdnet", "_COMPUTE_DW_ONCE"),
    "scan-outputs": ("jaxdl.layers.conv", "_OUTPUTS_AFTER_OPERANDS"),
    "no-links": ("jaxdl.models.densenet", "_INCREMENTAL_GRADS"),
}


# Variants that are XLA compiler options of the step's compilation rather than a formulation
# (in place of jaxdl.compiler.compiler_options(), which every other column compiles with).
COMPILER_OPTIONS = {"ynn-default": {},
                    "ynn-off": {"xla_cpu_experimental_ynn_fusion_type": ""}}


@contextlib.contextmanager
def variant(name):
  """Traces jaxdl with the formulation `name` (a VARIANTS key, or "jaxdl": none) switched off.

  JAX's tracing caches are cleared on entry and exit: the custom VJPs' forward and backward
  functions are traced once per shape and reused, which would carry a formulation from one
  variant's compilation into the next.
  """
  import jax
  jax.clear_caches()
  try:
    with _switched_off(name):
      yield
  finally:
    jax.clear_caches()


@contextlib.contextmanager
def _switched_off(name):
  from jax import lax

  from jaxdl.layers import conv as conv_lib
  if name in ("jaxdl", "same") or name in COMPILER_OPTIONS:
    yield
  elif name == "xla-conv":
    with conv_lib.conv_impl("xla"):
      yield
  elif name in FLAGS_OFF:
    module, flag, *value = FLAGS_OFF[name]
    with mock.patch.object(importlib.import_module(module), flag, value[0] if value else False):
      yield
  elif name == "no-conv-stride1":
    def plain(x, rhs, pads, dn, precision=None, preferred_element_type=None):
      return lax.conv_general_dilated(x, rhs, (1,) * (x.ndim - 2), pads, dimension_numbers=dn,
                                      precision=precision,
                                      preferred_element_type=preferred_element_type)
    with mock.patch.object(conv_lib, "conv_stride1", plain):
      yield
  elif name == "no-scan":
    with mock.patch.object(conv_lib, "scan_batch_chunks",
                           lambda fn, carry, xs, per_image_bytes: fn(carry, *xs)):
      yield
  elif name == "no-bn-vjp":
    from jaxdl.layers import norm
    with mock.patch.object(norm, "_bn_vjp", norm._bn_plain):
      yield
  elif name == "gelu-erfc":
    import jax

    from jaxdl.layers import activations
    erfc_form = lambda x: jax.nn.gelu(x, approximate=False)
    with mock.patch.dict(activations._ACTIVATIONS, {"gelu": erfc_form}):
      yield
  elif name == "dw-kgrad-whole":
    sys.path.insert(0, str(REPO / "tools"))
    from bench_conv import dw_kgrad_whole
    with mock.patch.object(conv_lib, "_depthwise_kernel_grad", dw_kgrad_whole):
      yield
  elif name == "dw-ynn-fusion":
    with mock.patch.object(conv_lib, "_loop_fusion_boundary", lambda y: y):
      yield
  elif name == "dw-kgrad-per-tap":
    sys.path.insert(0, str(REPO / "tools"))
    from bench_conv import dw_kgrad_per_tap_rows
    with mock.patch.object(conv_lib, "_depthwise_kernel_grad", dw_kgrad_per_tap_rows):
      yield
  elif name == "no-bn-relu-fusion":
    import jax

    from jaxdl.layers import norm
    fused = norm._bn_vjp

    def unfused(x, scale, bias, epsilon, relu):
      y, mean, var = fused(x, scale, bias, epsilon, False)
      return (jax.nn.relu(y) if relu else y), mean, var
    with mock.patch.object(norm, "_bn_vjp", unfused):
      yield
  else:
    raise ValueError(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")


def jax_runner(name, mode, batch, switched_off="jaxdl", steps_per_call=1):
  """(run, info) for jaxdl's `name`, compiled under `variant(switched_off)`; for training,
  one call of `run` takes `steps_per_call` steps (jaxdl.train.loop.make_train_steps)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  import jaxdl.models as models
  from jaxdl import compiler
  from jaxdl.train.loop import make_train_steps
  model = models.create(name)
  res = RES.get(name, 224)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, res, res, 3), dtype=np.float32))
  y = jnp.asarray(rng.integers(0, NUM_CLASSES.get(name, 1000), batch), jnp.int32)
  t0 = time.perf_counter()
  # Initialization speed is not measured: compile it without LLVM optimizations.
  v = jax.jit(model.init, compiler_options={"xla_backend_optimization_level": 0})(
      jax.random.key(0), x[:1])
  variables = {k: v[k] for k in ("params", "batch_stats") if k in v}
  params = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(v["params"]))
  options = COMPILER_OPTIONS.get(switched_off, compiler.compiler_options())
  if mode == "train":
    tx = optax.sgd(0.01, momentum=0.9)

    def step(variables, opt_state, x, y):
      def loss_fn(p):
        logits, new = model.apply({**variables, "params": p}, x, train=True,
                                  mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
      (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
      updates, opt_state = tx.update(grads, opt_state, variables["params"])
      return {"params": optax.apply_updates(variables["params"], updates), **new}, opt_state

    def steps(carry, xy):  # the loop's make_train_steps, on (variables, opt_state)
      return step(*carry, *xy), None
    carry = [variables, tx.init(variables["params"])]
    # K copies of the batch, stacked as the loop stacks K consecutive batches.
    xy = (x, y) if steps_per_call == 1 else jax.tree.map(
        lambda a: jnp.stack([a] * steps_per_call), (x, y))
    fn = (lambda c, xy: step(*c, *xy)) if steps_per_call == 1 else (
        lambda c, xy: make_train_steps(steps)(c, xy)[0])
    with variant(switched_off):
      compiled = jax.jit(fn, donate_argnums=0).lower(tuple(carry), xy).compile(options)

    def run():
      carry[:] = compiled(tuple(carry), xy)
      jax.block_until_ready(carry[0])
  else:
    with variant(switched_off):
      compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
          variables, x).compile(options)

    def run():
      compiled(variables, x).block_until_ready()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  run()  # warm-up
  return run, dict(compile_s=compile_s, warmup_s=time.perf_counter() - t0, params=params)


def measure(fn):
  """Calls fn(): (wall-clock seconds, user and kernel CPU seconds, minor page faults) of this
  process during the call."""
  r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  fn()
  t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
  return (t1 - t0, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime,
          r1.ru_minflt - r0.ru_minflt)


def timed(fn, cpu=None, per=1):
  """fn as a call that returns its wall-clock seconds / `per` (fn takes `per` steps); with a
  list `cpu`, each call also appends this process's (user, kernel) CPU seconds / `per`."""
  def call():
    seconds, user, kernel, _ = measure(fn)
    if cpu is not None:
      cpu.append((user / per, kernel / per))
    return seconds / per
  return call


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", nargs="+",
                      default=["densenet121", "rdnet_tiny", "resnet50", "densenet_bc_100_k12"])
  parser.add_argument("--modes", nargs="+", default=["train", "infer"])
  parser.add_argument("--train-batch", type=int, default=8, help="224x224 models")
  parser.add_argument("--infer-batch", type=int, default=16, help="224x224 models")
  parser.add_argument("--cifar-batch", type=int, default=64, help="32x32 models, both modes")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--variants", nargs="+", default=[], choices=sorted(VARIANTS),
                      help="also time jaxdl with a CPU formulation switched off, in the same "
                           "rotation: " + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()))
  parser.add_argument("--with-xla-conv", action="store_true", help="= --variants xla-conv")
  parser.add_argument("--no-timm", action="store_true",
                      help="time jaxdl (and its --variants) only; no PyTorch needed")
  parser.add_argument("--show-times", action="store_true", help="print every call's seconds")
  parser.add_argument("--cpu-times", action="store_true",
                      help="print each side's median user and kernel CPU seconds per counted "
                           "call (getrusage in its own process): the work apart from the "
                           "kernel's (page faults)")
  parser.add_argument("--block", type=int, default=3,
                      help="consecutive calls per turn, the first not counted (default 3)")
  parser.add_argument("--steps-per-call", type=int, default=1, metavar="K",
                      help="K > 1: also time jaxdl training K steps per compiled call, per "
                           "step (train mode only)")
  parser.add_argument("--torch-python", default="/work/torchvenv/bin/python")
  parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.torch_worker:
    torch_worker()
    return
  if args.block < 1:
    parser.error(f"--block must be at least 1, got {args.block}")
  if args.steps_per_call < 1:
    parser.error(f"--steps-per-call must be at least 1, got {args.steps_per_call}")
  multi = f"x{args.steps_per_call}" if args.steps_per_call > 1 else None
  variants = list(dict.fromkeys(args.variants + (["xla-conv"] if args.with_xla_conv else [])))
  if args.no_timm and not variants and not multi:
    parser.error("--no-timm leaves nothing to compare with: add --variants or --steps-per-call")
  import jax
  import numpy as np
  worker = None if args.no_timm else TorchWorker(args.torch_python)
  against = "" if worker is None else f" vs timm in {args.torch_python}"
  print(f"jax {jax.__version__} ({jax.default_backend()}){against}; "
        f"{os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.1f} at start; "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r} (both sides)")
  head = "| model | mode | batch | jaxdl img/s |"
  rule = "|---|---|---:|---:|"
  if worker is not None:
    head += " timm img/s | jaxdl / timm |"
    rule += "---:|---:|"
  head += " jaxdl compile (s) |"
  rule += "---:|"
  if multi:
    head += f" jaxdl {multi} steps/call img/s | {multi} / jaxdl |"
    rule += "---:|---:|"
    if worker is not None:
      head += f" {multi} / timm |"
      rule += "---:|"
  for v in variants:
    head += f" {v} img/s | jaxdl / {v} |"
    rule += "---:|---:|"
  print("\n" + head + "\n" + rule)
  for name in args.models:
    for mode in args.modes:
      batch = args.cifar_batch if name in RES else (
          args.train_batch if mode == "train" else args.infer_batch)
      run, info = jax_runner(name, mode, batch)
      others = [jax_runner(name, mode, batch, switched_off=v)[0] for v in variants]
      k = args.steps_per_call if multi and mode == "train" else 1
      run_k = jax_runner(name, mode, batch, steps_per_call=k)[0] if k > 1 else None
      if worker is not None:
        tinfo = worker.call(model=name, mode=mode, batch=batch)
        assert info["params"] == tinfo["params"], (name, info["params"], tinfo["params"])
      # (name, a call returning its seconds, the seconds so far); timm reports its own.
      cpu = {n: [] for n in ["jaxdl", "timm", multi] + variants if n}
      calls = [("jaxdl", timed(run, cpu["jaxdl"]), [])]
      if worker is not None:
        def timm_call():
          r = worker.call(model=name, mode=mode, batch=batch)
          cpu["timm"].append((r["user"], r["sys"]))
          return r["s"]
        calls.append(("timm", timm_call, []))
      if run_k is not None:
        calls.append((multi, timed(run_k, cpu[multi], per=k), []))
      calls += [(v, timed(o, cpu[v]), []) for v, o in zip(variants, others)]
      # One block of calls of each in turn, the order reversed every repeat.
      for r in range(args.repeats):
        for n, call, times in (calls if r % 2 == 0 else calls[::-1]):
          block = [call() for _ in range(args.block)]
          times.append(block[1:] if len(block) > 1 else block)
          if len(block) > 1:
            del cpu[n][-args.block]  # the block's first call is not counted
      blocks = {n: times for n, _, times in calls}
      seconds = {n: [t for b in times for t in b] for n, times in blocks.items()}
      j = batch / float(np.median(seconds["jaxdl"]))

      def ratio(other, this="jaxdl"):
        """this / other over all calls, and its range over the repeats (their block
        medians): how far one repeat's reading can stray."""
        per = [float(np.median(o)) / float(np.median(b))
               for b, o in zip(blocks[this], blocks[other])]
        r = float(np.median(seconds[other])) / float(np.median(seconds[this]))
        return f"{r:.2f}x ({min(per):.2f}-{max(per):.2f})"
      row = f"| {name} | {mode} | {batch} | {j:.1f} |"
      if worker is not None:
        t = batch / float(np.median(seconds["timm"]))
        row += f" {t:.1f} | {ratio('timm')} |"
      row += f" {info['compile_s']:.0f} |"
      if multi:
        if run_k is None:
          row += " - | - |" + (" - |" if worker is not None else "")
        else:
          row += f" {batch / float(np.median(seconds[multi])):.1f} | {ratio('jaxdl', multi)} |"
          if worker is not None:
            row += f" {ratio('timm', multi)} |"
      for v in variants:
        o = batch / float(np.median(seconds[v]))
        row += f" {o:.1f} | {ratio(v)} |"
      print(row, flush=True)
      if args.show_times:
        for n, times in seconds.items():
          print(f"    {n} s: " + " ".join(f"{t:.3f}" for t in times), flush=True)
      if args.cpu_times:
        print("    CPU s per call (median user / kernel): " + "; ".join(
            f"{n} {np.median([u for u, _ in c]):.2f} / {np.median([k for _, k in c]):.2f}"
            for n, c in cpu.items() if c), flush=True)
  if worker is not None:
    worker.close()
  print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  from jaxdl import hugepages
  hugepages.reexec_if_needed()  # JAXDL_HUGEPAGES=0: without (the timm worker inherits it)
  main()
