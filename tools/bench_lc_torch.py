r"""PyTorch side of tools/bench_lc.py: times the reference local-complexity code.

Run by bench_lc.py with the PyTorch venv (never imported by jaxdl):

  /work/torchvenv/bin/python tools/bench_lc_torch.py --ref-dir /work/ext/grok-adversarial \
      --weights /tmp/lc_bench.npz

The reference implementation (AhmedImtiazPrio/grok-adversarial, `local_complexity.py`,
`samplers.py`) is imported from --ref-dir, a checkout outside this repository; none of its code
is copied here. It calls `.cuda()` unconditionally, so this driver makes `.cuda()` a no-op to
run it on the CPU. The model is rebuilt in PyTorch from the weights bench_lc.py saved, with
forward hooks on the layers whose outputs the reference counts (every Linear for MLPs, as
`train_mlp_mnist.py`; the pre-activation ReLU inputs for the ResNet, as
`utils.add_hooks_preact_resnet18`).

Protocol (one JSON line answered per command line on stdin):
  time_samples R B   R timings of get_intersections_for_samples (frame sampled inside, as the
                     reference's MNIST script runs it) with batch size B
  time_hulls R B     R timings of get_intersections_for_hulls on precomputed vertices
  counts             per-layer counts on the vertices built from the saved directions
  quit
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self


def build_mlp(z):
  layers, names = [torch.nn.Flatten()], []
  i = 0
  while f"w{i}" in z:
    w, b = torch.from_numpy(z[f"w{i}"]), torch.from_numpy(z[f"b{i}"])
    lin = torch.nn.Linear(w.shape[0], w.shape[1])
    with torch.no_grad():
      lin.weight.copy_(w.T)
      lin.bias.copy_(b)
    layers.append(lin)
    names.append(len(layers) - 1)
    if f"w{i + 1}" in z:
      layers.append(torch.nn.ReLU())
    i += 1
  model = torch.nn.Sequential(*layers).eval()
  activation = {}
  layer_names = []
  for idx in names:
    name = f"{idx}"
    layer_names.append(name)
    model[idx].register_forward_hook(
        lambda m, inp, out, name=name: activation.__setitem__(name, out.detach()))
  return model, layer_names, activation


def build_resnet(z, ref):
  sys.path.insert(0, ref)
  from models import make_resnet18k  # noqa: E402  (the reference's model code)
  from utils import add_hooks_preact_resnet18  # noqa: E402

  class _Cfg:
    use_bn = False
  model = make_resnet18k(k=int(z["width"]), num_classes=10, bn=False).eval()
  model, layer_names, activation = add_hooks_preact_resnet18(model, _Cfg())
  return model, list(layer_names), activation


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--ref-dir", required=True)
  p.add_argument("--weights", required=True)
  p.add_argument("--threads", type=int, default=2)
  args = p.parse_args()
  torch.set_num_threads(args.threads)
  sys.path.insert(0, args.ref_dir)
  import local_complexity as ref_lc  # noqa: E402
  import samplers as ref_samplers  # noqa: E402

  z = dict(np.load(args.weights))
  kind = str(z["kind"])
  if kind == "mlp":
    model, layer_names, activation = build_mlp(z)
  else:
    model, layer_names, activation = build_resnet(z, args.ref_dir)
  x = torch.from_numpy(z["x"])                  # [N, C, H, W] (torch layout)
  dirs = torch.from_numpy(z["directions"])      # [P, C*H*W], orthonormal rows
  r = float(z["radius"])
  n_vertices = 2 * dirs.shape[0]
  flat = x.reshape(x.shape[0], 1, -1)
  hulls = torch.cat([flat + r * dirs[None], flat - r * dirs[None]], 1).reshape(
      (x.shape[0], n_vertices) + tuple(x.shape[1:]))
  print(json.dumps({"ready": True, "layers": layer_names}), flush=True)
  for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == "quit":
      break
    if cmd[0] in ("time_samples", "time_hulls"):
      repeats, batch = int(cmd[1]), int(cmd[2])
      times = []
      for _ in range(repeats):
        t = time.perf_counter()
        with torch.no_grad():
          if cmd[0] == "time_samples":
            ref_lc.get_intersections_for_samples(
                x, model=model, layer_names=layer_names, activation_buffer=activation,
                sampler=ref_samplers.get_ortho_hull_around_samples,
                sampler_params={"n": n_vertices, "r": r, "seed": 0}, batch_size=batch)
          else:
            ref_lc.get_intersections_for_hulls(hulls, model=model, layer_names=layer_names,
                                               activation_buffer=activation, batch_size=batch)
        times.append(time.perf_counter() - t)
      print(json.dumps({"times": times}), flush=True)
    elif cmd[0] == "counts":
      with torch.no_grad():
        n_inters, _ = ref_lc.get_intersections_for_hulls(
            hulls, model=model, layer_names=layer_names, activation_buffer=activation,
            batch_size=int(cmd[1]) if len(cmd) > 1 else 50)
      print(json.dumps({"counts": n_inters.numpy().astype(int).tolist()}), flush=True)


if __name__ == "__main__":
  main()
