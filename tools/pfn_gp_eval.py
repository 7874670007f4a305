r"""PFN vs exact GP: predictive NLL per context size on fresh draws from the training prior.

  python tools/pfn_gp_eval.py --weights gp_rbf --num_datasets 2000

For each context size n, draws `num_datasets` datasets of n context + `num_queries` query rows
from the prior stored with the weights (PFNRegressor().prior), and reports the mean NLL per
query point of the PFN and of the exact GP posterior predictive (float64,
batched; jaxdl.inference.gp kernels), their gap with a standard error (paired over
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


def _exact_gp(kernel, noise, xc, yc, xq):
  """The exact GP posterior predictive (noisy y) in float64, batched over datasets.

  xc [D, n, F], yc [D, n], xq [D, m, F] -> mean [D, m], variance [D, m] (R&W eq. 2.25-2.26;
  n = 0 gives the prior predictive). Kernel matrices come from the jaxdl kernel evaluated
  in float64; the solves are numpy's.
  """
  from jaxdl.inference import gp
  with jax.enable_x64(True):
    k64 = gp._cast_kernel(kernel, jnp.float64)
    xc64, xq64 = jnp.asarray(xc, jnp.float64), jnp.asarray(xq, jnp.float64)
    kss = np.asarray(jax.vmap(k64.diag)(xq64))
    if xc.shape[1] == 0:
      return np.zeros_like(kss), kss + noise
    kcc = np.asarray(jax.vmap(lambda a: k64(a, a))(xc64))
    kcq = np.asarray(jax.vmap(k64)(xc64, xq64))
  kcc = kcc + noise * np.eye(xc.shape[1])
  sol = np.linalg.solve(kcc, np.concatenate([np.asarray(yc, np.float64)[..., None], kcq], -1))
  mean = np.einsum("dnm,dn->dm", kcq, sol[..., 0])
  var = kss - np.sum(kcq * sol[..., 1:], 1) + noise
  return mean, var


def evaluate(weights: str, sizes, num_datasets: int, num_queries: int, seed: int):
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
    mean_gp, var_gp = _exact_gp(prior["kernel"], prior["noise_variance"], x[:, :n], y[:, :n],
                                x[:, n:])
    yq = y[:, n:].astype(np.float64)
    nll_gp = 0.5 * (np.log(2 * np.pi * var_gp) + (yq - mean_gp) ** 2 / var_gp)
    std_gp = np.sqrt(var_gp)
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
