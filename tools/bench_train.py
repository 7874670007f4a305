r"""Train-step throughput of the generic loop: quickstart (digits) and CIFAR-10 CNN steps.

  python tools/bench_train.py                       # 1 vs 8 host devices, both models
  python tools/bench_train.py --devices 1 --configs quickstart --steps 100
  python tools/bench_train.py --devices 1 --steps-per-call 1,4   # config.steps_per_call

Each setting runs in its own process (the host device count is fixed per process with
XLA_FLAGS=--xla_force_host_platform_device_count). Per setting: compile, warm up, then
`--repeats` timed windows of `--steps` steps, reported as the median steps/s and
examples/s, for the compiled step alone (batches already on the device) and end to end
(input pipeline + host-to-device + step). With --steps-per-call K (> 1) a call is the
loop's K-step function on K stacked batches; steps/s count steps, not calls. Ratios are to
the first setting of each config (device count, then steps per call).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"quickstart": "configs/quickstart.py", "cifar10_cnn": "configs/cifar10_cnn.py"}


def child(args):
  sys.path.insert(0, str(REPO))
  import jax
  import runpy
  from jaxdl.train import sharding as shard_lib
  from jaxdl.train.loop import stack_batches, setup

  config = runpy.run_path(str(REPO / CONFIGS[args.config]))["get_config"]()
  config.num_train_steps = 10 ** 6  # Long enough that schedules do not matter.
  k = config.steps_per_call = args.k
  built = setup(config)
  state = jax.jit(built.init, out_shardings=built.shardings)(jax.random.key(0))
  fn = built.train_step if k == 1 else built.train_steps

  def device_batch(host_batches):
    if k == 1:
      return shard_lib.global_batch(host_batches[0], built.mesh)
    return shard_lib.global_batch(stack_batches(host_batches), built.mesh, stacked=True)
  batches = [device_batch([built.pipeline.batch(k * c + i) for i in range(k)])
             for c in range(4)]
  for i in range(3):  # Compile and warm up.
    state, m = fn(state, batches[i % 4])
  jax.block_until_ready(m)
  calls = max(args.steps // k, 1)

  def timed(end_to_end):
    nonlocal state
    t0 = time.perf_counter()
    if end_to_end:
      it = built.pipeline.iterate(100, 100 + calls * k, prefetch=max(2, 2 * k))
      for _ in range(calls):
        state, m = fn(state, device_batch([next(it) for _ in range(k)]))
    else:
      for c in range(calls):
        state, m = fn(state, batches[c % 4])
    jax.block_until_ready(m)
    return calls * k / (time.perf_counter() - t0)

  step_only = [timed(False) for _ in range(args.repeats)]
  e2e = [timed(True) for _ in range(args.repeats)]
  print(json.dumps({"config": args.config, "devices": jax.device_count(), "k": k,
                    "batch_size": config.batch_size,
                    "step_per_s": statistics.median(step_only),
                    "e2e_step_per_s": statistics.median(e2e)}))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--configs", default="quickstart,cifar10_cnn")
  p.add_argument("--devices", default="1,8")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--steps-per-call", default="1", help="comma-separated K values")
  p.add_argument("--child", action="store_true")
  p.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
  p.add_argument("--config")
  args = p.parse_args()
  if args.child:
    return child(args)

  rows = []
  for name in args.configs.split(","):
    steps = args.steps if name == "quickstart" else max(args.steps // 3, 5)
    for n in [int(d) for d in args.devices.split(",")]:
      env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
             "PYTHONPATH": str(REPO)}
      for k in [int(v) for v in args.steps_per_call.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--child", "--config", name, "--steps",
                              str(steps), "--repeats", str(args.repeats), "--k", str(k)],
                             env=env, text=True, capture_output=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}")
  print(f"{'config':12s} {'devices':>7s} {'K':>3s} {'batch':>5s} {'step/s':>8s} {'img/s':>8s} "
        f"{'e2e step/s':>10s} {'ratio':>6s}")
  base = {}
  for r in rows:
    base.setdefault(r["config"], r["step_per_s"])
    print(f"{r['config']:12s} {r['devices']:7d} {r['k']:3d} {r['batch_size']:5d} "
          f"{r['step_per_s']:8.1f} "
          f"{r['step_per_s'] * r['batch_size']:8.0f} {r['e2e_step_per_s']:10.1f} "
          f"{r['step_per_s'] / base[r['config']]:6.2f}")


if __name__ == "__main__":
  main()
