r"""The UCI table of the functional-prior paper: test RMSE and NLL for several priors.

For every dataset and prior, all selected splits run at once: the prior fitting is vmapped
over splits (or done once per dataset, see --fit), and SGHMC is vmapped over splits x
chains. Results are appended to OUT.jsonl as they finish (a rerun skips what is there) and
the markdown table is rewritten to OUT.md after each entry.

  python tools/uci_table.py --out results/uci_table            # all 9 sets, 3 priors
  python tools/uci_table.py --datasets bostonHousing --splits 0-9 --fit per_split \
      --out results/uci_boston10

--fit per_split   fits one prior per split on that split's training inputs (the paper);
--fit shared      fits one prior per dataset on the first selected split's training inputs
                  and uses it for every split (the GP target is the same for all splits of
                  a dataset; only the measurement sets' training inputs differ): 1/S of the
                  cost, for CPU-sized runs.
Settings are those of configs/uci_gp_prior.py; `--set sampler.num_chains=2` overrides any.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxdl.data.offline import UCI_DATASETS, uci_num_splits  # noqa: E402
from jaxdl.train import bnn as T  # noqa: E402

PRIOR_NAMES = {"fixed_gaussian": "fixed N(0,1)", "gp_gaussian": "GP-induced Gaussian",
               "gp_hierarchical": "GP-induced hierarchical",
               "fixed_hierarchical": "fixed hierarchical"}


def _config(overrides):
  import importlib.util
  path = Path(__file__).resolve().parents[1] / "configs" / "uci_gp_prior.py"
  spec = importlib.util.spec_from_file_location("uci_gp_prior", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  for item in overrides:
    key, _, value = item.partition("=")
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], bool) else (
        value.lower() in ("1", "true", "yes"))
  return c


def _parse_splits(text, n):
  if text in ("", "all"):
    return list(range(n))
  out = []
  for part in text.split(","):
    a, _, b = part.partition("-")
    out += list(range(int(a), int(b) + 1)) if b else [int(a)]
  return [s for s in out if s < n]


def run_entry(config, dataset, prior_name, splits, fit_mode, seed, log):
  config.prior = prior_name
  config.dataset = dataset
  data = T.load_uci_splits(dataset, splits, config.get("data_dir") or None)
  d = data.x_train.shape[-1]
  _, template, apply_fn = T.build_model(config, (d,))
  prior = T.build_prior(config, template)
  k_fit, k_sample = jax.random.split(jax.random.key(seed))
  num = len(splits)
  hyper = jax.tree.map(lambda x: jnp.stack([x] * num), prior.init())
  t0 = time.time()
  w_last = None
  if prior_name.startswith("gp_"):
    target = T.gp_target(config, d)
    sel = slice(None) if fit_mode == "per_split" else slice(0, 1)
    fit_data = {"x": jnp.asarray(data.x_train[sel]), "lo": jnp.asarray(data.x_min[sel]),
                "hi": jnp.asarray(data.x_max[sel])}

    def cb(done, w):
      log(f"  fit {done + w.shape[1]}/{config.fit.num_iters}: W1 {np.mean(w[:, -1]):.3f}")
    fitted, hist = T.fit_priors(config, prior, apply_fn, target, fit_data, k_fit, callback=cb)
    fitted = jax.block_until_ready(fitted)
    w_last = float(np.mean(hist[:, -10:]))
    hyper = fitted if fit_mode == "per_split" else jax.tree.map(
        lambda x: jnp.repeat(x, num, axis=0), fitted)
  fit_s = time.time() - t0
  t1 = time.time()
  positions = T.sample_regression(config, prior, apply_fn, hyper,
                                  {"x": jnp.asarray(data.x_train),
                                   "y": jnp.asarray(data.y_train)}, k_sample,
                                  progress=lambda i: log(f"  sample {i}") if i % 10 == 0
                                  else None)
  positions = jax.block_until_ready(positions)
  sample_s = time.time() - t1
  per_split, _ = T.evaluate_regression(config, prior, apply_fn, positions, data)
  rmse = [m["rmse"] for m in per_split]
  nll = [m["nll"] for m in per_split]
  return {
      "dataset": dataset, "prior": prior_name, "splits": splits, "fit": fit_mode,
      "rmse_mean": float(np.mean(rmse)), "rmse_std": float(np.std(rmse, ddof=1)) if num > 1
      else 0.0, "nll_mean": float(np.mean(nll)),
      "nll_std": float(np.std(nll, ddof=1)) if num > 1 else 0.0,
      "nll_mixture_mean": float(np.mean([m["nll_mixture"] for m in per_split])),
      "r_hat_mean": float(np.mean([m.get("r_hat_mean", np.nan) for m in per_split])),
      "w1_last10": w_last, "fit_seconds": fit_s, "sample_seconds": sample_s,
      "per_split": per_split,
  }


def write_markdown(entries, path):
  datasets = [d for d in UCI_DATASETS if any(e["dataset"] == d for e in entries)]
  priors = [p for p in PRIOR_NAMES if any(e["prior"] == p for e in entries)]
  lines = []
  for metric in ("rmse", "nll"):
    lines.append(f"Test {metric.upper()} (mean +- std over splits; bold: best mean)\n")
    lines.append("| dataset | splits | " + " | ".join(PRIOR_NAMES[p] for p in priors) + " |")
    lines.append("|---|---|" + "---|" * len(priors))
    for d in datasets:
      row = {e["prior"]: e for e in entries if e["dataset"] == d}
      best = min((row[p][f"{metric}_mean"] for p in priors if p in row), default=None)
      cells = []
      for p in priors:
        if p not in row:
          cells.append("not run")
          continue
        e = row[p]
        txt = f"{e[f'{metric}_mean']:.3f} +- {e[f'{metric}_std']:.3f}"
        cells.append(f"**{txt}**" if e[f"{metric}_mean"] == best else txt)
      n = max(len(row[p]["splits"]) for p in row)
      lines.append(f"| {d} | {n} | " + " | ".join(cells) + " |")
    lines.append("")
  Path(path).write_text("\n".join(lines))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--datasets", default=",".join(UCI_DATASETS))
  ap.add_argument("--priors", default="fixed_gaussian,gp_gaussian,gp_hierarchical")
  ap.add_argument("--splits", default="all", help="e.g. 0-9 or 0,3,5 (clipped per dataset)")
  ap.add_argument("--fit", default="shared", choices=("shared", "per_split"))
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default="uci_table")
  ap.add_argument("--set", action="append", default=[], help="config override key=value")
  args = ap.parse_args()
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  jsonl = out.with_suffix(".jsonl")
  entries = [json.loads(l) for l in jsonl.read_text().splitlines()] if jsonl.exists() else []
  done = {(e["dataset"], e["prior"]) for e in entries}
  log = lambda msg: print(time.strftime("%H:%M:%S"), msg, flush=True)
  log(f"devices: {jax.devices()}")
  for dataset in args.datasets.split(","):
    splits = _parse_splits(args.splits, uci_num_splits(dataset))
    for prior_name in args.priors.split(","):
      if (dataset, prior_name) in done:
        continue
      log(f"{dataset} / {prior_name}: splits {splits[0]}..{splits[-1]} ({len(splits)})")
      entry = run_entry(_config(args.set), dataset, prior_name, splits, args.fit, args.seed,
                        log)
      entry["command"] = " ".join(sys.argv)
      log(f"  RMSE {entry['rmse_mean']:.3f} +- {entry['rmse_std']:.3f}  NLL "
          f"{entry['nll_mean']:.3f} +- {entry['nll_std']:.3f}  R-hat {entry['r_hat_mean']:.3f}"
          f"  (fit {entry['fit_seconds']:.0f} s, SGHMC {entry['sample_seconds']:.0f} s)")
      with jsonl.open("a") as f:
        f.write(json.dumps(entry) + "\n")
      entries.append(entry)
      write_markdown(entries, out.with_suffix(".md"))


if __name__ == "__main__":
  main()
