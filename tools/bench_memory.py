"""Peak training memory and step time: naive vs memory-efficient dense blocks.

Memory comes from XLA's buffer assignment for the compiled training step (forward, backward
and a Nesterov-SGD update, params/state donated):
`jax.jit(step).lower(...).compile().memory_analysis()`. `temp` is the step's scratch memory
(activations kept for the backward pass, workspace); `peak` = arguments + outputs + temp -
aliased (donated) bytes. Buffer assignment is done on HLO, so the memory rows compile with
LLVM optimizations off (same numbers, minutes faster); step times use the default compiler.
Step time: median wall time of the jitted step, naive and memory-efficient interleaved
(A B A B ...) after one warm-up each, so that load from other processes hits both alike.

Variants: `naive` (no rematerialization), `recompute` (memory_efficient=True, the default
custom-VJP recomputation), `checkpoint` (memory_efficient=True, remat="checkpoint":
jax.checkpoint + nothing_saveable, which XLA:CPU undoes). For A/B runs of the CPU fixes, the
same with one formulation switched off while tracing (tools/bench_models.py's variants):
`recompute-no-links` (no `accumulate_here` links in the dense blocks),
`recompute-scan-outputs` / `naive-scan-outputs` (the chunk loops' outputs left to
`lax.scan`, `jaxdl.layers.conv._OUTPUTS_AFTER_OPERANDS`).

  PYTHONPATH=. python tools/bench_memory.py            # the BENCHMARKS.md tables
  PYTHONPATH=. python tools/bench_memory.py --models densenet_bc_100_k12 --batches 64 \\
      --time densenet_bc_100_k12:64 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxdl.models as models

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_models  # noqa: E402  (its variant(): the formulation switches)

RES = {"densenet_bc_100_k12": 32}
VARIANTS = {"naive": dict(memory_efficient=False),
            "recompute": dict(memory_efficient=True, remat="recompute"),
            "checkpoint": dict(memory_efficient=True, remat="checkpoint")}
# Variants that differ from one above by a formulation switched off while the step is
# traced: (base variant, a tools/bench_models.py --variants name). For A/B runs of the CPU
# memory fixes.
SWITCHED = {
    "recompute-no-links": ("recompute", "no-links"),
    "recompute-scan-outputs": ("recompute", "scan-outputs"),
    "naive-scan-outputs": ("naive", "scan-outputs"),
}
FAST = {"xla_backend_optimization_level": 0}


def build(name, batch, variant):
  base, switched_off = SWITCHED.get(variant, (variant, "jaxdl"))
  with bench_models.variant(switched_off):
    return _build(name, batch, base)


def _build(name, batch, variant):
  model = models.create(name, **VARIANTS[variant])
  res = RES.get(name, 224)
  x = jax.ShapeDtypeStruct((batch, res, res, 3), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  tx = optax.sgd(0.1, momentum=0.9, nesterov=True)

  def loss_fn(params, batch_stats, x, y):
    logits, new = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                              mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

  def step(params, batch_stats, opt_state, x, y):
    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new["batch_stats"], opt_state, loss

  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + x.shape[1:]))
  opt_shape = jax.eval_shape(tx.init, shapes["params"])
  lowered = jax.jit(step, donate_argnums=(0, 1, 2)).lower(
      shapes["params"], shapes["batch_stats"], opt_shape, x, y)
  return model, tx, lowered


def memory(name, batch, variant):
  _, _, lowered = build(name, batch, variant)
  m = lowered.compile(FAST).memory_analysis()
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes)
  return peak / 2**20, m.temp_size_in_bytes / 2**20


def step_times(name, batch, variants, repeats):
  runs = {}
  for variant in variants:
    model, tx, lowered = build(name, batch, variant)
    compiled = lowered.compile()
    res = RES.get(name, 224)
    v = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, res, res, 3)))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, res, res, 3), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    runs[variant] = [compiled, [v["params"], v["batch_stats"], tx.init(v["params"])], x, y, []]
  for i in range(repeats + 1):
    for variant, run in runs.items():
      compiled, state, x, y, times = run
      t0 = time.perf_counter()
      *new_state, loss = compiled(*state, x, y)
      loss.block_until_ready()
      run[1] = new_state
      if i:  # the first call is a warm-up
        times.append(time.perf_counter() - t0)
  return {v: float(np.median(r[4])) for v, r in runs.items()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", nargs="+", default=["densenet_bc_100_k12", "densenet121"])
  parser.add_argument("--batches", nargs="+", type=int, default=None,
                      help="default: 16 64 128 for densenet_bc_100_k12, 8 32 64 otherwise")
  parser.add_argument("--variants", nargs="+", default=["naive", "recompute"])
  parser.add_argument("--checkpoint-row", default="densenet_bc_100_k12:64",
                      help="model:batch also measured with remat='checkpoint' ('' for none)")
  parser.add_argument("--time", nargs="*", default=["densenet_bc_100_k12:64"],
                      help="model:batch pairs whose step time is measured")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  unknown = [v for v in args.variants if v not in VARIANTS and v not in SWITCHED]
  if unknown:
    parser.error(f"unknown variant {unknown[0]!r}; choose from "
                 f"{sorted(VARIANTS) + sorted(SWITCHED)}")
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start")
  print("\n| model | batch | variant | peak (MiB) | temp (MiB) | naive / variant peak |")
  print("|---|---|---|---|---|---|")
  for name in args.models:
    batches = args.batches or ([16, 64, 128] if name in RES else [8, 32, 64])
    for batch in batches:
      variants = list(args.variants)
      if f"{name}:{batch}" == args.checkpoint_row and "checkpoint" not in variants:
        variants.append("checkpoint")
      rows = {v: memory(name, batch, v) for v in variants}
      base = rows.get("naive", (None,))[0]
      for v, (peak, temp) in rows.items():
        ratio = f"{base / peak:.2f}x" if base else "-"
        print(f"| {name} | {batch} | {v} | {peak:.0f} | {temp:.0f} | {ratio} |", flush=True)
  if args.time:
    timed = [v for v in args.variants if v != "checkpoint"]
    print(f"\n| model | batch | variant | step (s) | vs naive |"
          f" (median of {args.repeats}, interleaved)")
    print("|---|---|---|---|---|")
    for spec in args.time:
      name, batch = spec.split(":")
      t = step_times(name, int(batch), timed, args.repeats)
      for v in timed:
        rel = f"{100 * (t[v] / t['naive'] - 1):+.1f}%" if "naive" in t else "-"
        print(f"| {name} | {batch} | {v} | {t[v]:.3f} | {rel} |", flush=True)
  print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
  main()
