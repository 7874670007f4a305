r"""PFN vs exact GP: predictive NLL per context size on fresh draws from the training prior.

  python tools/pfn_gp_eval.py --weights gp_rbf --num_datasets 2000

For each context size n, draws `num_datasets` datasets of n context + `num_queries` query rows
from the prior stored with the weights (PFNRegressor().prior), and reports the mean NLL per
query point of the PFN and of the exact GP posterior predictive (float64,
jaxdl.inference.gp.predictive_log_density), their gap with a standard error (paired over
datasets), and the mean absolute difference of the predictive means and stds. Output: a
markdown table (and --json for the raw numbers).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np


def evaluate(weights: str, sizes, num_datasets: int, num_queries: int, seed: int):
  from jaxdl.inference import gp
  from jaxdl.inference import pfn as pfn_lib
  from jaxdl.inference.pfn_sklearn import PFNRegressor, load_pfn
  reg = PFNRegressor(weights)
  prior = reg.prior
  loaded = load_pfn(weights)
  sample = jax.jit(pfn_lib.gp_prior(prior["kernel"], prior["noise_variance"],
                                    x_min=prior["x_min"], x_max=prior["x_max"]),
                   static_argnums=(1, 2, 3))
  f = prior["num_features"]

  rows = []
  for n in sizes:
    x, y = sample(jax.random.fold_in(jax.random.key(seed), n), num_datasets, n + num_queries, f)
    x, y = np.asarray(x), np.asarray(y)
    t0 = time.perf_counter()
    logits = loaded.logits(x[:, :n], y[:, :n], x[:, n:], chunk=num_queries)
    t_pfn = time.perf_counter() - t0
    bar = loaded.bar
    nll_pfn = -np.asarray(bar.log_prob(logits, y[:, n:]), np.float64)
    mean_pfn = np.asarray(bar.mean(logits))
    std_pfn = np.sqrt(np.asarray(bar.variance(logits)))
    if n == 0:
      var = float(prior["kernel"].diag(np.zeros((1, f)))[0]) + prior["noise_variance"]
      yq = y[:, n:].astype(np.float64)
      nll_gp = 0.5 * (np.log(2 * np.pi * var) + yq ** 2 / var)
      mean_gp, std_gp = np.zeros_like(yq), np.full_like(yq, np.sqrt(var))
    else:
      with jax.enable_x64(True):
        def one(xc, yc, xq, yq):
          lp = gp.predictive_log_density(prior["kernel"], xc, yc, xq, yq,
                                         prior["noise_variance"], dtype=jnp.float64)
          m, v = gp.posterior(prior["kernel"], xc, yc, xq, prior["noise_variance"],
                              dtype=jnp.float64, full_cov=False)
          return lp, m, v
        res = [one(x[i, :n], y[i, :n], x[i, n:], y[i, n:]) for i in range(num_datasets)]
      nll_gp = -np.stack([r[0] for r in res])
      mean_gp = np.stack([r[1] for r in res])
      std_gp = np.sqrt(np.stack([r[2] for r in res]) + prior["noise_variance"])
    gap = (nll_pfn - nll_gp).mean(1)
    rows.append({"n": n, "nll_pfn": float(nll_pfn.mean()), "nll_gp": float(nll_gp.mean()),
                 "gap": float(gap.mean()), "gap_se": float(gap.std() / np.sqrt(len(gap))),
                 "mean_abs_diff": float(np.abs(mean_pfn - mean_gp).mean()),
                 "std_abs_diff": float(np.abs(std_pfn - std_gp).mean()),
                 "pfn_seconds": t_pfn})
  return rows


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--weights", default="gp_rbf")
  ap.add_argument("--sizes", default="0,1,2,4,8,16,24,32")
  ap.add_argument("--num_datasets", type=int, default=1000)
  ap.add_argument("--num_queries", type=int, default=16)
  ap.add_argument("--seed", type=int, default=12345)
  ap.add_argument("--json", default="")
  args = ap.parse_args()
  sizes = [int(s) for s in args.sizes.split(",")]
  rows = evaluate(args.weights, sizes, args.num_datasets, args.num_queries, args.seed)
  print("| context n | PFN NLL | exact GP NLL | gap (nats/pt) | |mean diff| | |std diff| |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['n']} | {r['nll_pfn']:.4f} | {r['nll_gp']:.4f} | {r['gap']:.4f} ± "
          f"{r['gap_se']:.4f} | {r['mean_abs_diff']:.4f} | {r['std_abs_diff']:.4f} |")
  avg = np.mean([r["gap"] for r in rows if r["n"] > 0])
  print(f"mean gap over n > 0: {avg:.4f} nats per point")
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(rows, fh, indent=1)


if __name__ == "__main__":
  main()
