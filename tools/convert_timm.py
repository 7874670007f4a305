"""Convert timm (PyTorch) weights to jaxdl Flax variables, and write golden-logit files.

Convert a checkpoint (safetensors needs no torch; .pth/.bin needs torch, loaded with
weights_only=True) into a msgpack file of Flax variables:

  PYTHONPATH=. python tools/convert_timm.py densenet121 --checkpoint model.safetensors \
      --out densenet121.msgpack

  variables = flax.serialization.msgpack_restore(open("densenet121.msgpack", "rb").read())
  logits = jaxdl.models.create("densenet121").apply(variables, x, train=False)

Golden files for CI (needs torch + timm + jax in one environment, e.g. /work/torchvenv):

  PYTHONPATH=. /work/torchvenv/bin/python tools/convert_timm.py --golden

For each model this draws a seeded random timm state dict (timm's own keys and shapes,
`random_timm_state_dict`), loads it into the timm model, evaluates it in eval mode on a
seeded input and stores the (key, shape) list, the seed and the timm logits in
tests/models/golden/timm_<name>.npz (a few KB). tests/models/test_timm_convert.py redraws
the same state dict with numpy alone, converts it and compares logits.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxdl.models import timm_convert  # noqa: E402

GOLDEN_DIR = REPO / "tests" / "models" / "golden"
GOLDEN_MODELS = ("densenet121", "rdnet_tiny", "resnet50", "mobilenetv2_100")
GOLDEN_SEED = 0
GOLDEN_BATCH = 2
GOLDEN_RES = 64
# Running-variance range of the random state dicts: larger for resnet50 so that its 16
# residual blocks keep the logits O(1) (see random_timm_state_dict).
VAR_RANGE = {"resnet50": (0.5, 4.0)}
DEFAULT_VAR_RANGE = (0.5, 1.5)


def timm_logits(name: str, state_dict: dict, x_nhwc: np.ndarray) -> np.ndarray:
  """Eval-mode float32 logits of timm model `name` with the given numpy state dict."""
  import timm
  import torch
  model = timm.create_model(name, pretrained=False)
  model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()},
                        strict=True)
  model.eval()
  with torch.no_grad():
    return model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def timm_spec(name: str) -> list[tuple[str, tuple[int, ...]]]:
  import timm
  sd = timm.create_model(name, pretrained=False).state_dict()
  return [(k, tuple(v.shape)) for k, v in sd.items()]


def write_golden(names) -> None:
  import timm
  import torch
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
  x = timm_convert.golden_input(GOLDEN_SEED, GOLDEN_BATCH, GOLDEN_RES)
  for name in names:
    spec = timm_spec(name)
    var_range = VAR_RANGE.get(name, DEFAULT_VAR_RANGE)
    sd = timm_convert.random_timm_state_dict(spec, GOLDEN_SEED, var_range)
    logits = timm_logits(name, sd, x)
    path = GOLDEN_DIR / f"timm_{name}.npz"
    np.savez_compressed(path, spec=np.array(timm_convert.spec_to_json(spec)),
                        seed=GOLDEN_SEED, var_range=np.array(var_range), batch=GOLDEN_BATCH,
                        resolution=GOLDEN_RES,
                        logits=logits.astype(np.float32),
                        versions=np.array(f"timm {timm.__version__}, torch {torch.__version__}"))
    print(f"{path.relative_to(REPO)}: {len(spec)} keys, logits {logits.shape}, "
          f"|logits| max {np.abs(logits).max():.3f}, {path.stat().st_size / 1024:.1f} KiB")


def load_checkpoint(path: str) -> dict:
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return load_file(path)
  import torch
  return torch.load(path, map_location="cpu", weights_only=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("model", nargs="?", help="jaxdl (= timm) model name, e.g. densenet121")
  parser.add_argument("--checkpoint", help="timm weights: .safetensors, .pth or .bin")
  parser.add_argument("--out", help="output msgpack file of Flax variables")
  parser.add_argument("--golden", action="store_true",
                      help="write tests/models/golden/timm_<name>.npz (needs torch + timm)")
  parser.add_argument("--models", nargs="*", default=list(GOLDEN_MODELS),
                      help="models for --golden")
  args = parser.parse_args(argv)
  if args.golden:
    write_golden(args.models)
    return 0
  if not (args.model and args.checkpoint and args.out):
    parser.error("give MODEL --checkpoint FILE --out FILE (or --golden)")
  import flax.serialization
  import jax
  variables = timm_convert.load_timm_state_dict(args.model, load_checkpoint(args.checkpoint))
  Path(args.out).write_bytes(flax.serialization.msgpack_serialize(
      jax.tree_util.tree_map(np.asarray, variables)))
  n = sum(np.size(v) for v in jax.tree_util.tree_leaves(variables.get("params", {})))
  print(f"wrote {args.out}: {n:,} parameters")
  return 0


if __name__ == "__main__":
  sys.exit(main())
