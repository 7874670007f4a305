"""Time to a compiled train step with and without jax's persistent compilation cache.

  PYTHONPATH=. python tools/bench_compile_cache.py --model rdnet_tiny --batch 8 --repeats 3

Each measurement is a fresh process (nothing in memory) that lowers and compiles
tools/bench_gpu.py's train step (jaxdl's compiler options) on the default backend, in three
settings, in turns: "off" (no persistent cache), "write" (an empty cache directory: compile
and store) and "read" (the directory "write" just filled: load). Printed: the median seconds
of lowering + compiling (or loading) per setting and read / off. What
`config.compilation_cache` (jaxdl.compiler.compilation_cache) gives a rerun or a resumed run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _child(model, dtype, batch, cache, smoke):
  sys.path.insert(0, str(REPO))
  sys.path.insert(0, str(REPO / "tools"))
  import jax
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
  if smoke:  # a tiny model compiles in well under jax's 1 s threshold for caching
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  import jax.numpy as jnp
  import numpy as np

  import bench_gpu
  from jaxdl import compiler
  net, step, tx, res, _ = bench_gpu.build_train_step(model, dtype, False, smoke)
  x = jnp.zeros((batch, res, res, 3))
  y = jnp.zeros((batch,), jnp.int32)
  with jax.default_device(jax.devices("cpu")[0]):
    v = jax.jit(net.init)(jax.random.key(0), np.zeros((1, res, res, 3), np.float32))
  v = {k: v[k] for k in ("params", "batch_stats") if k in v}
  o = tx.init(v["params"])
  t0 = time.perf_counter()
  compiler.jit(step, donate_argnums=(0, 1)).lower(v, o, x, y).compile()
  return time.perf_counter() - t0


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="rdnet_tiny")
  parser.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--smoke", action="store_true", help="tiny model (CI check)")
  parser.add_argument("--child", nargs=1, metavar="CACHE", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(_child(args.model, args.dtype, args.batch, args.child[0] or None,
                            args.smoke)))
    return None

  def one(cache):
    cmd = [sys.executable, __file__, "--model", args.model, "--dtype", args.dtype,
           "--batch", str(args.batch), "--child", cache] + (["--smoke"] if args.smoke else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    return float(out.stdout.strip().splitlines()[-1])

  times = {"off": [], "write": [], "read": []}
  for _ in range(args.repeats):
    cache = tempfile.mkdtemp(prefix="jaxdl_bench_cache_")
    try:
      times["off"].append(one(""))
      times["write"].append(one(cache))
      times["read"].append(one(cache))
    finally:
      shutil.rmtree(cache, ignore_errors=True)
  med = {k: statistics.median(v) for k, v in times.items()}
  print(f"{args.model} {args.dtype} batch {args.batch}, lower + compile (s), median of "
        f"{args.repeats}:")
  for k, v in times.items():
    print(f"  {k:5s} {med[k]:6.1f}   ({', '.join(f'{t:.1f}' for t in v)})")
  print(f"  read / off: {med['read'] / med['off']:.2f}")
  return med


if __name__ == "__main__":
  main()
