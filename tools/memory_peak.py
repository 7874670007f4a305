r"""What holds XLA's temporary memory at its peak: the live buffers, largest first.

  PYTHONPATH=. python tools/memory_peak.py --model densenet_bc_100_k12 --batch 64 \
      --variant recompute                        # compiles tools/bench_memory.py's step
  PYTHONPATH=. python tools/memory_peak.py --dump DIR [--module jit_step]  # any XLA dump

`compiled.memory_analysis()` gives the size of a step's temporary allocation, not what fills
it. XLA's dump (`XLA_FLAGS="--xla_dump_to=DIR --xla_dump_hlo_as_text"`) has both halves:
`*buffer-assignment.txt` places every value of the temporary allocation at an offset, and
`*live-range.txt` gives each value's first and last instruction in the schedule. The union
of the live values' byte ranges at each instruction is the memory in use there (values of
one buffer share their bytes and count once); its maximum is the peak, printed with the
values live at it and where each begins and ends. With --model the tool compiles the
training step of tools/bench_memory.py (forward, backward, Nesterov SGD, BatchNorm in
training mode) for this machine's backend, LLVM optimizations off as there (same buffer
assignment). Found the late cotangent sums and the early scan outputs of the
memory-efficient DenseNet (BENCHMARKS.md, "Memory-efficient DenseNet").
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

Value = collections.namedtuple("Value", "name size offset shape")
Live = collections.namedtuple("Live", "size name shape start end first last")

_VALUE = re.compile(r" value: <\d+ (\S+?)(?: \(phi\))? @\d+> \(size=(\d+),offset=(\d+)\): (.*)")
_RANGE = re.compile(r"\s+(\S+\{[\d,]*\}):(\d+)-(\d+)\s*$")
_SEQ = re.compile(r"\s+(\d+):(\S+)\s*$")


def temp_values(buffer_assignment: str) -> list[Value]:
  """The values placed in the temporary allocation(s) of a `*buffer-assignment.txt`."""
  values, in_temp = [], False
  for line in buffer_assignment.splitlines():
    if line.startswith("allocation"):
      in_temp = "preallocated-temp" in line
    elif in_temp:
      m = _VALUE.match(line)
      if m:
        name = m.group(1) if "{" in m.group(1) else m.group(1) + "{}"
        values.append(Value(name, int(m.group(2)), int(m.group(3)), m.group(4).strip()))
  return values


def live_ranges(live_range: str) -> tuple[dict[str, tuple[int, int]], dict[int, str]]:
  """(value name -> (first, last) schedule index, schedule index -> instruction name)."""
  ranges, seq = {}, {}
  for line in live_range.splitlines():
    m = _RANGE.match(line)
    if m:
      ranges[m.group(1)] = (int(m.group(2)), int(m.group(3)))
      continue
    m = _SEQ.match(line)
    if m:
      seq[int(m.group(1))] = m.group(2)
  return ranges, seq


def _union(intervals) -> int:
  total, hi = 0, -1
  for a, b in sorted(intervals):
    if b > hi:
      total += b - max(a, hi)
      hi = b
  return total


def peak(values: list[Value], ranges: dict[str, tuple[int, int]],
         seq: dict[int, str] | None = None) -> tuple[int, int, list[Live]]:
  """(peak bytes, schedule index of the peak, the values live there, largest first)."""
  seq = seq or {}
  timed = [(ranges[v.name], v) for v in values if v.name in ranges]
  best, at = 0, -1
  for t in sorted({start for (start, _), _ in timed}):
    used = _union((v.offset, v.offset + v.size) for (s, e), v in timed if s <= t <= e)
    if used > best:
      best, at = used, t
  live = [Live(v.size, v.name, v.shape, s, e, seq.get(s, "?"), seq.get(e, "?"))
          for (s, e), v in timed if s <= at <= e]
  return best, at, sorted(live, key=lambda l: (-l.size, l.name))


def analyse_dump(folder: str, module: str = "jit_step"):
  """`peak` of the module in an XLA dump folder whose file names contain `module`."""
  def one(kind):
    files = sorted(glob.glob(os.path.join(folder, f"*{module}*after_optimizations-{kind}.txt")))
    if not files:
      raise SystemExit(f"no *{module}*after_optimizations-{kind}.txt in {folder}: dump with "
                       f"XLA_FLAGS='--xla_dump_to={folder} --xla_dump_hlo_as_text'")
    return Path(files[-1]).read_text()
  ranges, seq = live_ranges(one("live-range"))
  return (*peak(temp_values(one("buffer-assignment")), ranges, seq), len(seq))


def report(result, top: int) -> str:
  used, at, live, n = result
  lines = [f"peak {used / 2**20:.1f} MiB at instruction {at} of {n}; {len(live)} values live"
           f" ({sum(l.size for l in live) / 2**20:.1f} MiB before sharing)"]
  by_shape = collections.Counter()
  for l in live:
    by_shape[l.shape.split("{")[0]] += l.size
  for l in live[:top]:
    lines.append(f"{l.size / 2**20:9.2f} MiB  {l.shape.split('{')[0]:32s} {l.name:36s} "
                 f"live {l.start}-{l.end} ({l.first} .. {l.last})")
  lines.append("by shape:")
  for shape, size in by_shape.most_common(top):
    lines.append(f"{size / 2**20:9.2f} MiB  {shape}")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dump", help="an XLA dump folder (--xla_dump_to) to read")
  parser.add_argument("--module", default="jit_step", help="part of the module's file names")
  parser.add_argument("--model", help="compile tools/bench_memory.py's step of this model")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--variant", default="recompute", help="a bench_memory.py variant")
  parser.add_argument("--top", type=int, default=25)
  args = parser.parse_args(argv)
  if bool(args.dump) == bool(args.model):
    parser.error("give one of --dump DIR or --model NAME")
  if args.model:
    folder = tempfile.mkdtemp(prefix="memory_peak_")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={folder} "
                               "--xla_dump_hlo_as_text --xla_dump_hlo_module_re=jit_step")
    sys.path.insert(0, str(REPO / "tools"))
    import bench_memory  # noqa: E402  (after XLA_FLAGS: jax reads them once)
    if args.variant not in bench_memory.VARIANTS and args.variant not in bench_memory.SWITCHED:
      parser.error(f"unknown variant {args.variant!r}")
    peak_mib, temp_mib = bench_memory.memory(args.model, args.batch, args.variant)
    print(f"{args.model} batch {args.batch} {args.variant}: memory_analysis peak "
          f"{peak_mib:.0f} MiB, temporaries {temp_mib:.0f} MiB (dump: {folder})")
    args.dump, args.module = folder, "jit_step"
  print(report(analyse_dump(args.dump, args.module), args.top))


if __name__ == "__main__":
  main()
