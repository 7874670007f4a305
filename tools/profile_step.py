r"""Where a jaxdl training (or inference) step spends its time on this machine, op by op.

  PYTHONPATH=. python tools/profile_step.py --model densenet121 --batch 8
  PYTHONPATH=. python tools/profile_step.py --model rdnet_tiny --mode infer --top 40
  PYTHONPATH=. python tools/profile_step.py --model resnet50 --variant no-bn-vjp
  PYTHONPATH=. python tools/profile_step.py --model rdnet_tiny --group 'layers_\d'

Compiles the same step as tools/bench_models.py (optionally under one of its --variants),
runs it --steps times under `jax.profiler.trace`, and sums the executed XLA ops' wall time by
name from the Perfetto trace. Each op name is joined to the optimized HLO (dumped by XLA in
the same process) to show what it computes: its kind (fusion, custom-call, convolution, ...)
and result shape, and its op_name (the JAX source op of the fusion's root: a YNNPACK fusion
can hold several ops, e.g. a ResNet's last convolutions together with the global average
pool, and is counted under its root). Totals are per step. On CPU the ops of one step run
in sequence (each op may use several threads), except that a dot's or convolution's event
only dispatches it to the thread pool: the idle gap after it, in which the pool does the
work, is added to that op (`op_times`), so the per-op sums add up to about the step time
(densenet121: 1236 ms summed, ~1204 ms wall; rdnet_tiny: 2108 ms summed, walls 2046, 2041
and 1946 ms). A run with --out clears that folder's earlier dump and trace first (read
together, two runs' traces once summed to 3.5 s per 2.1 s rdnet_tiny step).
--group REGEX also sums them by a part of their op_name (module names), forward and
backward apart.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def hlo_index(dump_dir):
  """{instruction name: (kind, shape, op_name)} from the optimized HLO of the dumped step
  modules."""
  index = {}
  # A result is one shape, or a tuple of them (a multi-output fusion: a variadic reduction).
  pattern = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\(.*?\)|\S+(?: \S+)?) ([\w\-]+)\(")
  for path in glob.glob(os.path.join(dump_dir, "*cpu_after_optimizations.txt")):
    with open(path) as f:
      for line in f:
        m = pattern.match(line)
        if m:
          name, shape, kind = m.groups()
          if kind == "fusion":
            kind = "fusion:" + (re.search(r"kind=(\w+)", line) or [None, "?"])[1]
          elif kind == "custom-call":
            kind = "custom-call:" + (re.search(r'custom_call_target="([^"]+)"', line)
                                     or [None, "?"])[1]
          op = re.search(r'op_name="([^"]*)"', line)
          index.setdefault(name, (kind, _short_shape(shape), op[1] if op else ""))
  return index


def _short_shape(shape):
  """A result shape for display: f32[8,56]{1,0} -> f32[8,56], a tuple of n shapes ->
  (n x its first shape, ...)."""
  if not shape.startswith("("):
    return shape.split("{")[0]
  parts = re.findall(r"\w+\[[\d,]*\]", shape)
  return f"({len(parts)} x {parts[0]}, ...)" if parts else shape


def op_times(trace_dir, names=None, pool_ops=()):
  """({event name: total microseconds}, {name: count}, {name: microseconds with gaps}, [step
  microseconds]) over the "X" events of the Perfetto trace(s).

  XLA:CPU runs a dot (and a convolution) as a task on its thread pool: the op's own event
  only dispatches it, and the work shows as a gap in which no op event is open. With `names`
  (the ops, e.g. `hlo_index`'s keys), each such gap inside an execution of the step (an
  "ThunkExecutor::Execute (wait for completion)" event) is added to the op of `pool_ops` (the
  dots, convolutions and custom fusions: the ops that hand work to the pool) that ended last
  before it in that execution, else to the op that ended last before it: the third result.
  (XLA:CPU also starts independent ops, e.g. the optimizer's small updates, while a dot's
  pool work runs: the gap after such an op is still the dot's.) The fourth is each
  execution's wall time.
  """
  totals = collections.Counter()
  counts = collections.Counter()
  spans, steps = [], []
  for path in glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True):
    with gzip.open(path) as f:
      events = json.load(f)
    for e in events.get("traceEvents", events) if isinstance(events, dict) else events:
      if e.get("ph") == "X" and "dur" in e:
        totals[e["name"]] += float(e["dur"])
        counts[e["name"]] += 1
        if names is not None and e["name"] in names:
          spans.append((float(e["ts"]), float(e["ts"]) + float(e["dur"]), e["name"]))
        if e["name"] == "ThunkExecutor::Execute (wait for completion)":
          steps.append((float(e["ts"]), float(e["ts"]) + float(e["dur"])))
  with_gaps = collections.Counter({n: totals[n] for n in names or ()})
  spans.sort()
  steps.sort()
  for start, stop in steps:
    end, last, last_pool, pool_end = start, None, None, start
    for a, b, name in spans:
      if b <= start or a >= stop:
        continue
      if a > end and last is not None:
        with_gaps[last_pool or last] += a - end
      if b > end:
        end, last = b, name
      if name in pool_ops and b >= pool_end:
        last_pool, pool_end = name, b
  return totals, counts, with_gaps, [b - a for a, b in steps]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="densenet121")
  parser.add_argument("--mode", choices=["train", "infer"], default="train")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--top", type=int, default=30)
  parser.add_argument("--variant", default="jaxdl",
                      help="one of tools/bench_models.py's --variants (default: none)")
  parser.add_argument("--out", default=None, help="keep the HLO dump and trace here")
  parser.add_argument("--group", default=None, metavar="REGEX",
                      help="also sum the ops by the first match of REGEX in their op_name "
                           "(e.g. 'layers_\\d' for RDNet's mixer layers, "
                           "'denseblock\\d|transition\\d' for DenseNet); 'transpose' in an "
                           "op_name marks the backward pass")
  args = parser.parse_args(argv)
  out = args.out or tempfile.mkdtemp(prefix="jaxdl_profile_")
  dump, trace = os.path.join(out, "hlo"), os.path.join(out, "trace")
  for stale in (dump, trace):  # an earlier run's dump or trace would be read as this one's
    shutil.rmtree(stale, ignore_errors=True)
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = (f"{flags} --xla_dump_to={dump} --xla_dump_hlo_as_text "
                             "--xla_dump_hlo_module_re=.*(step|lambda).*")
  sys.path.insert(0, str(REPO / "tools"))
  import jax

  import bench_models
  run, info = bench_models.jax_runner(args.model, args.mode, args.batch,
                                      switched_off=args.variant)
  with jax.profiler.trace(trace, create_perfetto_trace=True):
    for _ in range(args.steps):
      run()
  # A while / call / conditional's event spans the ops of its body, which have their own
  # events: counting it too would count that time twice.
  index = {n: v for n, v in hlo_index(dump).items()
           if v[0] not in ("while", "call", "conditional")}
  pool = {n for n, v in index.items()
          if v[0] in ("dot", "convolution", "fusion:kCustom") or v[0].startswith("custom-call")}
  totals, counts, with_gaps, walls = op_times(trace, index, pool)
  own = sum(t for n, t in totals.items() if n in index) / args.steps
  ops = {n: t for n, t in with_gaps.items() if counts[n]}
  step_us = sum(ops.values()) / args.steps
  print(f"{args.model} {args.mode} batch {args.batch} (variant {args.variant}): "
        f"{step_us / 1e3:.1f} ms per step in {len(ops)} XLA ops (wall "
        f"{', '.join(f'{w / 1e3:.0f}' for w in walls)} ms; ops' own events "
        f"{own / 1e3:.1f} ms, the rest is thread-pool work of dots and convolutions, "
        f"added to the op that dispatched it); output in {out}")
  kinds = collections.Counter()
  for n, t in ops.items():
    kinds[index[n][0]] += t / args.steps
  print("\nby kind:")
  for k, t in kinds.most_common():
    print(f"  {t / 1e3:9.1f} ms  {100 * t / step_us:5.1f}%  {k}")
  if args.group:
    groups = collections.Counter()
    for n, t in ops.items():
      op = index[n][2]
      m = re.search(args.group, op)
      key = (m.group(0) if m else "(other)", "backward" if "transpose" in op else "forward")
      groups[key] += t / args.steps
    print(f"\nby {args.group!r} in op_name:")
    for (g, direction), t in groups.most_common():
      print(f"  {t / 1e3:9.1f} ms  {100 * t / step_us:5.1f}%  {g} ({direction})")
  print(f"\ntop {args.top} ops:")
  for n, t in sorted(ops.items(), key=lambda kv: -kv[1])[:args.top]:
    per = t / args.steps
    kind, shape, op = index[n]
    print(f"  {per / 1e3:8.1f} ms  {100 * per / step_us:5.1f}%  x{counts[n] // args.steps:<3d}"
          f" {n}  {kind} {shape} {'/'.join(op.split('/')[-3:])}")


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  from jaxdl import hugepages
  hugepages.reexec_if_needed()  # JAXDL_HUGEPAGES=0: profile without
  main()
