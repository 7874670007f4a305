r"""Exports a trained PFN from a training workdir to jaxdl/inference/pfn_weights/<name>.*

  python tools/pfn_export.py --workdir /tmp/pfn_runs/gp --name gp_rbf

Writes <name>.msgpack (the params, Flax msgpack) and <name>.json (model name and options,
Riemann borders recomputed from the run's prior, the prior, context limits, and the training
run: steps, batch size, final training loss). The borders are a deterministic function of
the dataset options (jaxdl.data.pfn_prior.PriorDataset), so they match the training run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

REPO = Path(__file__).resolve().parents[1]


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--name", required=True)
  ap.add_argument("--out", default=str(REPO / "jaxdl" / "inference" / "pfn_weights"))
  ap.add_argument("--max_context", type=int, default=0,
                  help="context limit written to the json (default: the training maximum)")
  ap.add_argument("--step", type=int, default=0, help="checkpoint step (default: latest)")
  args = ap.parse_args()

  from jaxdl import data as jdata
  import jaxdl.data.pfn_prior  # noqa: F401  (registers the pfn_prior dataset)

  workdir = Path(args.workdir)
  config = json.loads((workdir / "config.json").read_text())
  mgr = ocp.CheckpointManager((workdir / "checkpoints").absolute())
  step = args.step or mgr.latest_step()
  state = mgr.restore(step, args=ocp.args.StandardRestore())
  params = jax.tree.map(np.asarray, state["params"])

  kw = config["dataset"]["kwargs"]
  ds = jdata.load("pfn_prior", "train", **kw)
  model = dict(config["model"])
  model.setdefault("num_classes", int(kw.get("num_buckets", 1000)) if ds.task == "regression"
                   else int(kw["prior"].get("max_classes", kw["prior"].get("num_classes", 10))))
  metrics = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l]
  losses = [m["train/loss"] for m in metrics if "train/loss" in m and m["step"] <= step]
  meta = {
      "model": model,
      "task": ds.task,
      "borders": None if ds.borders is None else [float(b) for b in ds.borders],
      "prior": kw["prior"],
      "num_features": int(kw.get("num_features", 1)),
      "max_context": int(args.max_context or kw.get("max_context", 50)),
      "trained_max_context": int(kw.get("max_context", 50)),
      "seq_len": int(kw.get("seq_len", 64)),
      "training": {"steps": int(step), "batch_size": int(config["batch_size"]),
                   "final_train_loss_mean_last_10_logs": float(np.mean(losses[-10:]))
                   if losses else None,
                   "optimizer": config["optimizer"], "seed": config["seed"]},
  }
  if ds.task == "classification":
    meta["max_classes"] = int(kw["prior"].get("max_classes", kw["prior"].get("num_classes", 10)))
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{args.name}.msgpack").write_bytes(serialization.msgpack_serialize(params))
  (out / f"{args.name}.json").write_text(json.dumps(meta, indent=1) + "\n")
  n = sum(p.size for p in jax.tree.leaves(params))
  print(f"wrote {out}/{args.name}.msgpack ({n} params, step {step}) and .json")


if __name__ == "__main__":
  main()
