"""Patch-based vs layer-by-layer inference: peak memory (computed and XLA-measured), MACs, time.

  PYTHONPATH=. python tools/bench_patch.py                 # all configs, markdown tables
  PYTHONPATH=. python tools/bench_patch.py --only mbv2_035 --repeats 20

For every variant of configs/tiny_patch_inference.py (MobileNetV2 w0.35 @144, w1.0 @224,
MCUNet-in3 @176, each original and redistributed) it prints:
  * computed int8 peak activation memory layer by layer and with 4x4 patches (TinyEngine
    in-place conventions, as MCUNetV2 counts), the ratio and the MAC overhead of the halos;
  * XLA's memory_analysis() temp size of the compiled float32 forward passes (full vs
    patch-based, batch 1) next to the computed float32 numbers without in-place tricks;
  * wall time of the two compiled forward passes (batch 1, median of --repeats runs after a
    warm-up, measured alternately in one process) and their ratio; both traced with plain
    convolutions (`conv_impl("xla")`, no CPU matmul / shifted-sum formulations).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxdl.efficiency import patch_inference as P  # noqa: E402
from jaxdl.efficiency import report as R  # noqa: E402
from jaxdl.layers.conv import conv_impl  # noqa: E402

VARIANTS = ("mbv2_035", "mbv2_035_rd", "mbv2_100", "mbv2_100_rd", "mcunet_in3", "mcunet_in3_rd")


def _random_variables(shapes, seed=0):
  rng = np.random.default_rng(seed)
  def leaf(path, s):
    name = str(path[-1])
    if "kernel" in name:
      v = rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
    elif "var" in name or "scale" in name:
      v = rng.uniform(0.5, 1.5, s.shape)
    else:
      v = rng.uniform(-0.1, 0.1, s.shape)
    return jnp.asarray(v, s.dtype)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _time(fns, args, repeats):
  """Median seconds of each compiled fn, run alternately so load changes hit both alike."""
  for f in fns:
    jax.block_until_ready(f(*args))
  times = [[] for _ in fns]
  for _ in range(repeats):
    for i, f in enumerate(fns):
      t = time.perf_counter()
      jax.block_until_ready(f(*args))
      times[i].append(time.perf_counter() - t)
  return [float(np.median(t)) for t in times]


def bench(variant: str, repeats: int) -> dict:
  cfg_path = Path(__file__).resolve().parents[1] / "configs" / "tiny_patch_inference.py"
  args = R.parser().parse_args(["--config", f"{cfg_path}:{variant}"])
  cfg = R.load_config(args.config)
  for k, v in cfg.items():
    setattr(args, k, v)
  model, shapes, shape, split = R.build(args)
  r = R.analyze(model, shapes, shape, split=split, num_patches=args.patches, dtype=args.dtype)
  variables = _random_variables(shapes)
  x = jax.random.normal(jax.random.key(0), shape)
  full = jax.jit(partial(model.apply, train=False))
  patched = jax.jit(partial(P.patch_apply, model, split=split, num_patches=args.patches))
  # Both traced with plain convolutions (the layer graph an MCU runtime executes; patch_apply
  # reads the model as convolutions anyway), so the time ratio compares like with like.
  with conv_impl("xla"):
    err = float(jnp.abs(full(variables, x) - patched(variables, x)).max())
  t_full, t_patch = _time([full, patched], (variables, x), repeats)
  m = r["measured"]
  return {
      "variant": variant, "model": args.model, "resolution": args.resolution, "split": split,
      "patches": args.patches, "stage": r["stage_shape"], "input_patch": r["input_patch"],
      "int8_full_kB": r["full"]["peak_bytes"] / 1024,
      "int8_patch_kB": r["patched"]["peak_bytes"] / 1024, "int8_ratio": r["ratio"],
      "macs_full_M": r["macs"]["total_full"] / 1e6,
      "macs_patch_M": r["macs"]["total_patched"] / 1e6, "mac_overhead": r["mac_overhead"],
      "xla_full_kB": m["full"]["temp_bytes"] / 1024,
      "xla_patch_kB": m["patched"]["temp_bytes"] / 1024, "xla_ratio": m["ratio"],
      "f32_full_kB": m["computed_f32_full"] / 1024,
      "f32_patch_kB": m["computed_f32_patched"] / 1024,
      "ms_full": 1e3 * t_full, "ms_patch": 1e3 * t_patch, "time_ratio": t_patch / t_full,
      "max_abs_diff": err, "device": m["full"]["device"],
  }


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--only", nargs="*", default=list(VARIANTS))
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--json", help="also write the rows to this file")
  a = p.parse_args(argv)
  rows = []
  for v in a.only:
    rows.append(bench(v, a.repeats))
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  print(f"\ndevice: {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores visible), jax {jax.__version__}, load average "
        f"{os.getloadavg()[0]:.1f}\n")
  print("| variant | model @ res | split | patch grid / stage | int8 peak layer-by-layer | "
        "int8 peak patch-based | ratio | MACs | MAC overhead |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['variant']} | {r['model']} @ {r['resolution']} | {r['split']} | "
          f"{r['patches']}x{r['patches']} on {r['stage'][0]}x{r['stage'][1]} | "
          f"{r['int8_full_kB']:.1f} kB | {r['int8_patch_kB']:.1f} kB | {r['int8_ratio']:.2f}x | "
          f"{r['macs_full_M']:.1f}M -> {r['macs_patch_M']:.1f}M | "
          f"{100 * r['mac_overhead']:+.1f}% |")
  print("\n| variant | XLA temp full | XLA temp patch | XLA ratio | computed f32 full | "
        "computed f32 patch | ms full | ms patch | time ratio | max abs diff |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['variant']} | {r['xla_full_kB']:.1f} kB | {r['xla_patch_kB']:.1f} kB | "
          f"{r['xla_ratio']:.2f}x | {r['f32_full_kB']:.1f} kB | {r['f32_patch_kB']:.1f} kB | "
          f"{r['ms_full']:.2f} | {r['ms_patch']:.2f} | {r['time_ratio']:.2f}x | "
          f"{r['max_abs_diff']:.1e} |")
  if a.json:
    Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
  main()
