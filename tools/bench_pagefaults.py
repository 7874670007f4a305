"""Page faults and kernel time per training/inference step, in this process's environment.

  PYTHONPATH=. python tools/bench_pagefaults.py --model densenet121               # jaxdl
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 PYTHONPATH=. python tools/bench_pagefaults.py
  /work/torchvenv/bin/python tools/bench_pagefaults.py --side timm                  # timm

Runs the step of tools/bench_models.py (jaxdl: compiled with jaxdl's CPU options; timm:
eager, 2 threads) twice as warm-up, then --steps times back to back, and prints each step's
wall time, minor page faults (`getrusage` ru_minflt) and user/kernel CPU seconds, and the
median time. It does not re-execute itself: it measures the GLIBC_TUNABLES it is started with
(BENCHMARKS.md, "Page faults").
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench_models():
  sys.path.insert(0, str(REPO / "tools"))
  sys.path.insert(0, str(REPO))
  import bench_models
  return bench_models


def _runner(side, model, mode, batch, variant="jaxdl"):
  bench_models = _bench_models()
  if side == "jaxdl":
    return bench_models.jax_runner(model, mode, batch, switched_off=variant)[0]
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  return bench_models.timm_runner(model, mode, batch)[0]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--side", choices=["jaxdl", "timm"], default="jaxdl")
  parser.add_argument("--model", default="densenet121")
  parser.add_argument("--mode", choices=["train", "infer"], default="train")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--variant", default="jaxdl",
                      choices=["jaxdl"] + sorted(_bench_models().VARIANTS),
                      help="jaxdl side: one of tools/bench_models.py's --variants")
  args = parser.parse_args(argv)
  run = _runner(args.side, args.model, args.mode, args.batch, args.variant)
  run()
  run()
  measure = _bench_models().measure
  times, user, kernel = [], [], []
  for _ in range(args.steps):
    seconds, u, k, faults = measure(run)
    times.append(seconds)
    user.append(u)
    kernel.append(k)
    print(f"{seconds:.3f} s  minflt {faults}  user {u:.2f} s  sys {k:.2f} s", flush=True)
  side = args.side if args.variant == "jaxdl" else f"{args.side} ({args.variant})"
  print(f"{side} {args.model} {args.mode} batch {args.batch}, "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}: "
        f"median {statistics.median(times):.3f} s, user {statistics.median(user):.2f} s, "
        f"sys {statistics.median(kernel):.2f} s")


if __name__ == "__main__":
  main()
