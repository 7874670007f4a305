r"""Benchmark: prototype layer forward + backward, Pallas kernel vs XLA.

  PYTHONPATH=. python tools/bench_prototype.py                 # the issue's shapes
  PYTHONPATH=. python tools/bench_prototype.py --small --repeats 5

Shapes of the issue: 2000 prototypes x 128 dims over 7x7 and 14x14 feature maps, batch 80;
the loss is sum(g * min_distance) so that the backward pass is exercised. On GPU/TPU the
kernel is compiled; on CPU the kernel can only run in interpret mode (not a speed
measurement), so on CPU this prints the XLA reference timing only unless --interpret.
Several repeats, median, ratio to XLA measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from jaxdl.kernels.prototype_distance import prototype_min_distance


def bench(fn, args, repeats):
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--small", action="store_true", help="batch 8, 200 prototypes (CPU)")
  ap.add_argument("--interpret", action="store_true", help="also time the interpreted kernel")
  ap.add_argument("--metric", default="l2", choices=("l2", "dot"))
  args = ap.parse_args()
  backend = jax.default_backend()
  n, num_p, d = (8, 200, 128) if args.small else (80, 2000, 128)
  impls = ["xla"]
  if backend in ("gpu", "tpu") or args.interpret:
    impls.append("pallas")
  print(f"backend={backend} device={jax.devices()[0].device_kind} batch={n} "
        f"prototypes={num_p} dim={d} metric={args.metric} repeats={args.repeats}")
  for side in (7, 14):
    key_z, key_p, key_g = jax.random.split(jax.random.key(side), 3)
    z = jax.random.uniform(key_z, (n, side * side, d))
    p = jax.random.uniform(key_p, (num_p, d))
    g = jax.random.normal(key_g, (n, num_p))
    res = {}
    for impl in impls:
      interpret = impl == "pallas" and backend == "cpu"

      def loss(z, p, impl=impl, interpret=interpret):
        dist, _ = prototype_min_distance(z, p, metric=args.metric, impl=impl,
                                         interpret=interpret)
        return jnp.sum(g * dist)

      fwd = jax.jit(lambda z, p, loss=loss: loss(z, p))
      fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
      res[impl] = (bench(fwd, (z, p), args.repeats), bench(fwd_bwd, (z, p), args.repeats))
    base_f, base_b = res["xla"]
    for impl, (tf, tb) in res.items():
      print(f"{side}x{side} {impl:6s} forward {1e3 * tf:9.2f} ms ({base_f / tf:5.2f}x XLA)   "
            f"forward+backward {1e3 * tb:9.2f} ms ({base_b / tb:5.2f}x XLA)")


if __name__ == "__main__":
  main()
