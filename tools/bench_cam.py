r"""CAMs per second: jaxdl.analysis.cam vs pytorch-grad-cam, resnet50, one run.

  PYTHONPATH=. python tools/bench_cam.py --batch 64 --resolution 224 --repeats 5

The jaxdl side runs in this process (jit-compiled, warmed up, `block_until_ready`). The
pytorch-grad-cam side runs in a worker process in the torch venv (`--torch-python`, default
/work/torchvenv/bin/python) that builds timm's resnet50 once and then times one call per
request on stdin, so the repeats of the two libraries alternate and see the same machine
load. Both explain the same random input for the same per-image classes at the same target
layer (`layer4[-1]`), with the same (random, converted) weights, as a user would call them:
`grad_cam(model, variables, x, classes=c)` and `GradCAM(model, [layer])(x, targets)`
(which back-propagates to every parameter, as it does by default). Reported: the median
wall time of `--repeats` calls per method, CAMs/s = batch / median, the ratio
pytorch-grad-cam time / jaxdl time, and the median process CPU seconds per call of each side
(less sensitive than wall time to other jobs on a shared machine).
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
METHODS = ("gradcam", "gradcam++", "eigencam")


class WorkerDied(RuntimeError):
  pass


def torch_worker(batch: int, resolution: int):
  """Reads method names on stdin, prints the seconds of one pytorch-grad-cam call each."""
  import numpy as np
  import timm
  import torch
  from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
  sys.path.insert(0, str(REPO))
  from jaxdl.models import timm_convert as tc

  model = timm.create_model("resnet50", pretrained=False).eval()
  spec = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
  sd = tc.random_timm_state_dict(spec, seed=1, var_range=(0.5, 4.0))
  model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
  x = torch.from_numpy(tc.golden_input(0, batch, resolution).transpose(0, 3, 1, 2).copy())
  classes = np.random.default_rng(0).integers(0, 1000, batch)
  targets = [ClassifierOutputTarget(int(c)) for c in classes]
  cls = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}
  print(json.dumps({"ready": True, "threads": torch.get_num_threads(),
                    "torch": torch.__version__}), flush=True)
  for line in sys.stdin:
    method = line.strip()
    with cls[method](model=model, target_layers=[model.layer4[-1]]) as cam:
      t0, c0 = time.perf_counter(), time.process_time()
      out = cam(input_tensor=x, targets=None if method == "eigencam" else targets)
      dt, dc = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"method": method, "seconds": dt, "cpu_seconds": dc,
                      "shape": list(out.shape)}), flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--resolution", type=int, default=224)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
  p.add_argument("--torch-python", default="/work/torchvenv/bin/python")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    return torch_worker(args.batch, args.resolution)

  sys.path.insert(0, str(REPO))
  import jax
  import jax.numpy as jnp
  import numpy as np
  import jaxdl.models as models
  from jaxdl.analysis import cam
  from jaxdl.models import timm_convert as tc

  env = dict(os.environ, PYTHONPATH=str(REPO))
  worker = subprocess.Popen(
      [args.torch_python, __file__, "--worker", "--batch", str(args.batch),
       "--resolution", str(args.resolution)],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

  def reply():
    while True:  # skip anything else the worker's imports print
      line = worker.stdout.readline()
      if not line:
        raise WorkerDied(f"the pytorch-grad-cam worker exited ({worker.poll()}); out of "
                         "memory? (batch 64 at 224 needs ~8 GB there)")
      if line.startswith("{"):
        return json.loads(line)

  def torch_time(method):
    worker.stdin.write(method + "\n")
    worker.stdin.flush()
    r = reply()
    return r["seconds"], r["cpu_seconds"]

  # jaxdl: the same random weights, converted from the timm key list (no torch here).
  spec_json = subprocess.run(
      [args.torch_python, "-c", "import timm, json; m = timm.create_model('resnet50'); "
       "print(json.dumps([[k, list(v.shape)] for k, v in m.state_dict().items()]))"],
      capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
  sd = tc.random_timm_state_dict(tc.spec_from_json(spec_json), seed=1, var_range=(0.5, 4.0))
  variables = models.load_timm_state_dict("resnet50", sd)
  model = models.create("resnet50")
  x = jnp.asarray(tc.golden_input(0, args.batch, args.resolution))
  classes = jnp.asarray(np.random.default_rng(0).integers(0, 1000, args.batch))
  fns = {"gradcam": lambda: cam.grad_cam(model, variables, x, classes=classes),
         "gradcam++": lambda: cam.grad_cam_plus_plus(model, variables, x, classes=classes),
         "eigencam": lambda: cam.eigen_cam(model, variables, x)}
  info = reply()

  rows = []
  try:
    for method in args.methods:
      rows.append(bench_one(method, args, fns, torch_time))
  except WorkerDied as e:
    print(f"stopped: {e}")
  worker.stdin.close()
  worker.wait()
  report(rows, info)


def bench_one(method, args, fns, torch_time):
  t0 = time.perf_counter()
  fns[method]().block_until_ready()  # compile + first run
  compile_s = time.perf_counter() - t0
  torch_time(method)                 # warm-up call
  jt, tt, jc, tc_ = [], [], [], []
  for _ in range(args.repeats):      # alternate, so both see the same load
    t0, c0 = time.perf_counter(), time.process_time()
    fns[method]().block_until_ready()
    jt.append(time.perf_counter() - t0)
    jc.append(time.process_time() - c0)
    wall, cpu_s = torch_time(method)
    tt.append(wall)
    tc_.append(cpu_s)
  mj, mt = statistics.median(jt), statistics.median(tt)
  row = dict(method=method, batch=args.batch, resolution=args.resolution,
             jaxdl_s=round(mj, 3), torch_s=round(mt, 3),
             jaxdl_cams_per_s=round(args.batch / mj, 2),
             pytorch_grad_cam_cams_per_s=round(args.batch / mt, 2),
             speedup=round(mt / mj, 2), jaxdl_compile_s=round(compile_s, 1),
             cpu_s_jaxdl=round(statistics.median(jc), 2),
             cpu_s_torch=round(statistics.median(tc_), 2),
             jaxdl_all_s=[round(t, 3) for t in jt], torch_all_s=[round(t, 3) for t in tt])
  print(json.dumps(row), flush=True)
  return row


def report(rows, info):
  import jax
  cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
              if l.startswith("model name")), platform.processor())
  print(f"\nmachine: {cpu}, {os.cpu_count()} cores; jax {jax.__version__} "
        f"({jax.devices()[0].platform}); torch {info['torch']} ({info['threads']} threads); "
        f"load average at the end {os.getloadavg()[0]:.1f}")
  print("\n| method | jaxdl CAMs/s | pytorch-grad-cam CAMs/s | ratio (wall) | "
        "CPU s/call jaxdl | CPU s/call pytorch-grad-cam |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['method']} | {r['jaxdl_cams_per_s']} | {r['pytorch_grad_cam_cams_per_s']} | "
          f"{r['speedup']}x | {r['cpu_s_jaxdl']} | {r['cpu_s_torch']} |")


if __name__ == "__main__":
  main()
