r"""Local-complexity throughput: jaxdl vs the reference PyTorch code, side by side in one run.

  PYTHONPATH=. python tools/bench_lc.py --ref-dir /work/ext/grok-adversarial \
      [--torch-python /work/torchvenv/bin/python] [--models mlp3,mlp4,resnet] [--rounds 5]

Measures points per second of local complexity (Humayun et al., ICML 2024) for
  mlp3    784-200-200-200-10 ReLU MLP (the reference's "depth 4": four Linear layers), logits
          counted as a layer, 1000 MNIST points (else uniform [0, 1]), 50 vertices (P = 25),
          r = 0.5
  mlp4    784-(200 x 4)-10 (four hidden layers of 200), same frame
  resnet  pre-activation ResNet-18 width 16 without BatchNorm on 32x32x3 inputs, 40 vertices
          (P = 20), r = 0.005, 256 points (the paper uses 1024)
Both sides are float32 on the CPU with the same number of threads. The reference
(AhmedImtiazPrio/grok-adversarial, a checkout outside this repository given by --ref-dir) runs
in the PyTorch venv through tools/bench_lc_torch.py, kept alive so the rounds interleave:
each round times jaxdl (`method="auto"`: the first layer once per point and once per
direction; and `method="vertices"`: every vertex through the model) and then the reference
(`get_intersections_for_samples`, which draws the frame as the MNIST script does, and
`get_intersections_for_hulls` on precomputed vertices with its best batch size). Medians over
all rounds; the ratio is jaxdl / the faster reference path. For the MLP the per-point counts
are also compared with the reference's on identical weights and vertices.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __name__ == "__main__" and "--threads" in sys.argv:
  # One XLA CPU thread must be chosen before jax is imported.
  if sys.argv[sys.argv.index("--threads") + 1] == "1":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false"
                               " intra_op_parallelism_threads=1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxdl import models  # noqa: E402
from jaxdl.analysis import local_complexity  # noqa: E402
from jaxdl.analysis.local_complexity import (random_directions,  # noqa: E402
                                             uses_shared_first_layer)


def _points(kind, n, rng):
  if kind == "resnet":
    return rng.uniform(-2.0, 2.0, size=(n, 32, 32, 3)).astype(np.float32)
  try:
    import jaxdl.data as jdata
    x = jdata.load("mnist_grok", "train")["inputs"][:n].astype(np.float32) / 255.0
    return x
  except Exception:  # No offline data: uniform pixels.
    return rng.uniform(0.0, 1.0, size=(n, 28, 28, 1)).astype(np.float32)


def _setup(kind):
  if kind in ("mlp3", "mlp4"):
    depth = 3 if kind == "mlp3" else 4
    model = models.create("mlp", features=(200,) * depth, weight_init="torch",
                          sow_logits=True)
    n, p, r = 1000, 25, 0.5
  else:
    model = models.create("preact_resnet18", width=16, use_bn=False)
    n, p, r = 256, 20, 0.005
  x = _points(kind, n, np.random.default_rng(0))
  variables = model.init(jax.random.key(0), jnp.asarray(x[:2]))
  variables = {k: v for k, v in variables.items() if k != "preactivations"}
  dirs = random_directions(jax.random.key(1), p, x.shape[1:])
  return model, variables, jnp.asarray(x), dirs, r


def _save_for_torch(kind, variables, x, dirs, r, path):
  out = {"kind": "mlp" if kind.startswith("mlp") else "resnet", "radius": np.float32(r)}
  x = np.asarray(x)
  d = np.asarray(dirs)
  if kind.startswith("mlp"):
    params = variables["params"]
    names = sorted(k for k in params if k.startswith("dense_")) + ["head"]
    for i, name in enumerate(names):
      out[f"w{i}"] = np.asarray(params[name]["kernel"])
      out[f"b{i}"] = np.asarray(params[name]["bias"])
    # NHWC with C = 1 flattens the same as NCHW; torch gets [N, 1, 28, 28].
    out["x"] = np.transpose(x, (0, 3, 1, 2)).copy()
    out["directions"] = np.transpose(d, (0, 3, 1, 2)).reshape(d.shape[0], -1).copy()
  else:
    out["width"] = np.int32(16)
    out["x"] = np.transpose(x, (0, 3, 1, 2)).copy()
    out["directions"] = np.transpose(d, (0, 3, 1, 2)).reshape(d.shape[0], -1).copy()
  np.savez(path, **out)


class TorchReference:
  def __init__(self, python, ref_dir, weights, threads):
    here = Path(__file__).resolve().parent
    self.proc = subprocess.Popen(
        [python, str(here / "bench_lc_torch.py"), "--ref-dir", ref_dir, "--weights", weights,
         "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.info = self._read()

  def _read(self):
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError("the PyTorch reference process ended; run it by hand to see why")
    return json.loads(line)

  def ask(self, cmd):
    self.proc.stdin.write(cmd + "\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self):
    try:
      self.proc.stdin.write("quit\n")
      self.proc.stdin.flush()
    except BrokenPipeError:
      pass
    self.proc.wait(timeout=60)


def _time_jax(fn, repeats):
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return times


def bench(kind, args):
  model, variables, x, dirs, r = _setup(kind)
  n = x.shape[0]
  fast = uses_shared_first_layer(model.apply, variables, x)
  runs = {
      "jaxdl auto": lambda: local_complexity(model.apply, variables, x, radius=r,
                                             directions=dirs),
      "jaxdl vertices": lambda: local_complexity(model.apply, variables, x, radius=r,
                                                 directions=dirs, method="vertices"),
  }
  for fn in runs.values():  # Compile outside the timings.
    jax.block_until_ready(fn())
  times = {k: [] for k in runs}
  ref = None
  ref_batches = [b for b in args.ref_batches if b <= n]
  with tempfile.TemporaryDirectory() as tmp:
    weights = os.path.join(tmp, "w.npz")
    _save_for_torch(kind, variables, x, dirs, r, weights)
    if args.ref_dir:
      ref = TorchReference(args.torch_python, args.ref_dir, weights, args.threads)
      for b in ref_batches:
        times[f"reference hulls b={b}"] = []
      if kind.startswith("mlp"):
        times[f"reference samples b={n}"] = []
        ref.ask(f"time_samples 1 {n}")  # Warm-up.
      for b in ref_batches:
        ref.ask(f"time_hulls 1 {b}")
    for _ in range(args.rounds):
      for k, fn in runs.items():
        times[k] += _time_jax(fn, args.repeats)
      if ref is not None:
        if kind.startswith("mlp"):
          times[f"reference samples b={n}"] += ref.ask(f"time_samples {args.repeats} {n}")["times"]
        for b in ref_batches:
          times[f"reference hulls b={b}"] += ref.ask(f"time_hulls {args.repeats} {b}")["times"]
    agreement = None
    if ref is not None and kind.startswith("mlp"):
      theirs = np.asarray(ref.ask("counts 50")["counts"])            # [N, layers]
      lc = local_complexity(model.apply, variables, x, radius=r, directions=dirs)
      names = sorted(k for k in lc["per_layer"] if k.startswith("act_")) + ["logits"]
      ours = np.stack([np.asarray(lc["per_layer"][k]) for k in names], 1)
      agreement = {"points_identical": float(np.mean(np.all(ours == theirs, 1))),
                   "mean_total_jaxdl": float(ours.sum(1).mean()),
                   "mean_total_reference": float(theirs.sum(1).mean()),
                   "max_abs_diff": int(np.abs(ours - theirs).max())}
    if ref is not None:
      ref.close()
  med = {k: float(np.median(v)) for k, v in times.items() if v}
  pps = {k: n / v for k, v in med.items()}
  best_ref = max((v for k, v in pps.items() if k.startswith("reference")), default=None)
  return {"model": kind, "points": n, "vertices": int(2 * dirs.shape[0]),
          "shared_first_layer": bool(fast), "median_s": med, "points_per_s": pps,
          "speedup_vs_best_reference": (pps["jaxdl auto"] / best_ref) if best_ref else None,
          "samples": {k: len(v) for k, v in times.items()}, "agreement": agreement}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--ref-dir", default="", help="checkout of AhmedImtiazPrio/grok-adversarial")
  p.add_argument("--torch-python", default="/work/torchvenv/bin/python")
  p.add_argument("--models", default="mlp3,mlp4,resnet")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--threads", type=int, default=os.cpu_count(),
                 help="CPU threads of both sides (1: XLA and PyTorch single-threaded)")
  p.add_argument("--ref-batches", default="100,1000",
                 help="reference batch sizes (points per forward) for the hulls path")
  p.add_argument("--json", default="", help="also write the results here")
  args = p.parse_args()
  args.ref_batches = [int(b) for b in args.ref_batches.split(",")]
  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} thread(s), "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, load "
        f"{os.getloadavg()[0]:.1f}", flush=True)
  results = []
  for kind in args.models.split(","):
    if kind == "resnet" and "preact_resnet18" not in models.list_models():
      print("# resnet: preact_resnet18 is not registered in this checkout; skipped")
      continue
    res = bench(kind, args)
    results.append(res)
    print(json.dumps(res), flush=True)
    line = ", ".join(f"{k}: {v:,.0f} pts/s" for k, v in res["points_per_s"].items())
    print(f"{kind}: {line}; speedup vs best reference: "
          f"{res['speedup_vs_best_reference'] or float('nan'):.2f}x", flush=True)
  print(f"# load after: {os.getloadavg()[0]:.1f}")
  if args.json:
    Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
