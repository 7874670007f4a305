r"""Wall time of prior fitting and SGHMC in the UCI Boston setting: jaxdl vs optbnn (PyTorch).

Setting (Tran et al. 2022, optbnn notebooks/uci_regression.ipynb): a 1x100 tanh network,
100 measurement points, 128 functions per step, 200 outer x 200 critic steps; SGHMC with
batch 32, 2000 burn-in steps, 40 samples x 2000 thinning, 4 chains (84,000 steps a chain).

  python tools/bench_bayes.py --optbnn /work/ext/optbnn_ref --torch-python /work/torchvenv/bin/python

The reference runs in a subprocess with PyTorch from a checkout of
tranbahien/you-need-a-good-prior OUTSIDE this repository (--optbnn; nothing of it is
imported here). Both sides run on the same machine in the same invocation, interleaved,
`--repeats` times; medians are reported. The full reference workload takes ~15 minutes
on 2 cores, so both sides are timed on a slice (`--fit-iters` outer iterations; a shorter
SGHMC run of `--torch-sghmc-steps` steps a chain for the reference) and extrapolated
linearly to the full setting (both loops do identical work per step); jaxdl's full SGHMC
run is also timed end to end. Compilation time is reported separately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FULL_FIT_ITERS = 200
FULL_SGHMC_STEPS = 2000 + 41 * 2000   # burn-in + (num_samples + 1) * keep_every, optbnn
NUM_CHAINS = 4

_TORCH_DRIVER = textwrap.dedent(r"""
  import json, math, sys, tempfile, time
  import numpy as np, torch
  optbnn_dir, mode, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
  torch.set_num_threads(threads)
  # Compatibility shim: torch.cholesky (used by optbnn's GP) was removed in PyTorch 2.x.
  torch.cholesky = lambda a, upper=False: torch.linalg.cholesky(a, upper=upper)
  sys.path.insert(0, optbnn_dir)
  from optbnn.gp.models.gpr import GPR
  from optbnn.gp import kernels, mean_functions, priors
  from optbnn.bnn.reparam_nets import GaussianMLPReparameterization
  from optbnn.bnn.nets.mlp import MLP
  from optbnn.bnn.likelihoods import LikGaussian
  from optbnn.bnn.priors import FixedGaussianPrior
  from optbnn.prior_mappers.wasserstein_mapper import MapperWasserstein
  from optbnn.utils.rand_generators import MeasureSetGenerator
  from optbnn.utils.normalization import normalize_data
  from optbnn.utils.exp_utils import get_input_range
  from optbnn.sgmcmc_bayes_net.regression_net import RegressionNet
  from optbnn.utils import util
  util.set_seed(123)
  x_tr, y_tr, x_te, y_te = util.load_uci_data(optbnn_dir + "/data/uci", 0, "boston")
  out = tempfile.mkdtemp()
  if mode == "fit":
    xn, yn, xtn, ytn, _, _ = normalize_data(x_tr, y_tr, x_te, y_te)
    lo, hi = get_input_range(xn, xtn)
    d = x_tr.shape[1]
    gen = MeasureSetGenerator(xn, lo, hi, 0.7)
    ls = math.sqrt(2.0 * d)
    kern = kernels.RBF(input_dim=d, lengthscales=torch.tensor([ls], dtype=torch.double),
                       variance=torch.tensor([1.0], dtype=torch.double), ARD=True)
    kern.lengthscales.prior = priors.LogNormal(torch.ones([d]) * math.log(ls), torch.ones([d]))
    kern.variance.prior = priors.LogNormal(torch.ones([1]) * 0.1, torch.ones([1]))
    gp = GPR(X=torch.from_numpy(xn), Y=torch.from_numpy(yn).reshape([-1, 1]), kern=kern,
             mean_function=mean_functions.Zero())
    gp.likelihood.variance.set(0.1)
    bnn = GaussianMLPReparameterization(d, 1, [100], "tanh", scaled_variance=True)
    mapper = MapperWasserstein(gp, bnn, gen, out_dir=out, output_dim=1, n_data=100,
                               wasserstein_steps=(0, 200), wasserstein_lr=0.02, logger=None,
                               wasserstein_thres=0.1, n_gpu=0, gpu_gp=False)
    t = time.perf_counter()
    mapper.optimize(num_iters=n, n_samples=128, lr=0.05, print_every=10 ** 9,
                    save_ckpt_every=10 ** 9)
    dt = time.perf_counter() - t
    print(json.dumps({"seconds": dt, "units": n}))
  else:
    net = MLP(x_tr.shape[1], 1, [100], "tanh")
    bn = RegressionNet(net, LikGaussian(0.1), FixedGaussianPrior(std=1.0), out, n_gpu=0)
    keep = n // 5
    t = time.perf_counter()
    bn.sample_multi_chains(x_tr, y_tr, num_samples=4, n_discarded=0, num_burn_in_steps=keep,
                           keep_every=keep, lr=1e-2, batch_size=32, mdecay=1e-2,
                           num_chains=4, print_every_n_samples=10 ** 9)
    dt = time.perf_counter() - t
    print(json.dumps({"seconds": dt, "units": 4 * (keep + 5 * keep)}))
""")


def torch_run(args, mode, n):
  with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    f.write(_TORCH_DRIVER)
  out = subprocess.run([args.torch_python, f.name, args.optbnn, mode, str(n),
                        str(args.torch_threads)],
                       capture_output=True, text=True, timeout=7200)
  if out.returncode != 0:
    raise RuntimeError(out.stderr[-3000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


def jax_setup(args):
  import jax
  import jax.numpy as jnp
  from jaxdl.train import bnn as T
  sys.path.insert(0, str(Path(__file__).resolve().parent))
  import uci_table
  config = uci_table._config([])
  config.prior = "gp_gaussian"
  data = T.load_uci_splits("bostonHousing", [0], args.data_dir)
  d = data.x_train.shape[-1]
  _, template, apply_fn = T.build_model(config, (d,))
  prior = T.build_prior(config, template)
  fit_data = {"x": jnp.asarray(data.x_train), "lo": jnp.asarray(data.x_min),
              "hi": jnp.asarray(data.x_max)}
  target = T.gp_target(config, d)
  return dict(jax=jax, jnp=jnp, T=T, config=config, data=data, prior=prior,
              apply_fn=apply_fn, fit_data=fit_data, target=target)


def jax_fit_timer(s, iters):
  """Returns (compile+first-chunk seconds, fn timing one chunk of `iters` outer steps)."""
  jax, T, config = s["jax"], s["T"], s["config"]
  from jaxdl.inference import wasserstein
  f = config.fit
  init, step = wasserstein.build_fit(
      s["prior"], s["apply_fn"], s["target"], T.measurement_fn(config),
      num_functions=f.num_functions, critic_steps=f.critic_steps, critic_lr=f.critic_lr,
      prior_lr=f.prior_lr, penalty_coeff=f.penalty_coeff, penalty=f.penalty,
      critic_hidden=f.critic_hidden, grad_norm_threshold=f.grad_norm_threshold)
  data = jax.tree.map(lambda x: x[0], s["fit_data"])
  run = jax.jit(lambda st: jax.lax.scan(lambda c, _: step(c, data), st, None, length=iters))
  state = [init(jax.random.key(0))]
  t = time.perf_counter()
  state[0] = jax.block_until_ready(run(state[0])[0])
  first = time.perf_counter() - t

  def timed():
    t = time.perf_counter()
    state[0] = jax.block_until_ready(run(state[0])[0])
    return time.perf_counter() - t
  return first, timed


def critic_step_flops(s):
  """XLA's FLOP count of one critic step (objective + gradient penalty, value and gradient)
  at the benchmark's shapes: the fit's dominant cost is critic_steps of these per outer
  iteration (the scan's body is counted once by cost analysis, so it is lowered alone)."""
  jax, jnp, config = s["jax"], s["jnp"], s["config"]
  from jaxdl.inference import wasserstein
  f = config.fit
  n, m = f.num_functions, f.num_points
  critic = wasserstein.Critic(f.critic_hidden)
  f_nn = jnp.zeros((n, m, 1)) + 0.1
  f_gp = jnp.ones((n, m, 1))
  params = critic.init(jax.random.key(0), f_nn[:, :, 0])

  def objective(p, key):
    fn = lambda v: critic.apply(p, v)
    return (-wasserstein.wasserstein_estimate(fn, f_nn, f_gp)
            + f.penalty_coeff * wasserstein.gradient_penalty(fn, key, f_nn, f_gp, f.penalty))
  lowered = jax.jit(jax.value_and_grad(objective)).lower(params, jax.random.key(1))
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def matmul_peak(size=2048, repeats=5):
  """float32 FLOP/s of a jitted size^3 matmul, median of `repeats` (the CPU's usable peak)."""
  import jax
  import numpy as np
  a = jax.numpy.asarray(np.random.default_rng(0).standard_normal((size, size), np.float32))
  mm = jax.jit(lambda a: a @ a)
  jax.block_until_ready(mm(a))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(mm(a))
    times.append(time.perf_counter() - t)
  return 2.0 * size ** 3 / statistics.median(times)


def jax_sghmc(s):
  jax, jnp, T, config = s["jax"], s["jnp"], s["T"], s["config"]
  config.prior = "fixed_gaussian"
  hyper = jax.tree.map(lambda x: x[None], s["prior"].init())
  train = {"x": jnp.asarray(s["data"].x_train), "y": jnp.asarray(s["data"].y_train)}
  t = time.perf_counter()
  pos = T.sample_regression(config, s["prior"], s["apply_fn"], hyper, train,
                            jax.random.key(int(time.time())))
  jax.block_until_ready(pos)
  return time.perf_counter() - t


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--optbnn", default="/work/ext/optbnn_ref")
  ap.add_argument("--torch-python", default="/work/torchvenv/bin/python")
  ap.add_argument("--data-dir", default=None)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--fit-iters", type=int, default=5)
  ap.add_argument("--torch-sghmc-steps", type=int, default=2000,
                  help="steps per chain of the reference's timed SGHMC slice (x4 chains)")
  ap.add_argument("--torch-threads", type=int, default=1,
                  help="torch.set_num_threads for the reference (1 is fastest for its small "
                  "ops on 2 cores; see BENCHMARKS.md)")
  ap.add_argument("--skip-torch", action="store_true")
  ap.add_argument("--out", default=None, help="write the results as JSON here")
  args = ap.parse_args()

  import jax
  s = jax_setup(args)
  flops = critic_step_flops(s) * s["config"].fit.critic_steps
  peak = matmul_peak()
  print(f"critic FLOPs per outer iteration {flops / 1e9:.1f} G; float32 2048^3 matmul "
        f"{peak / 1e9:.1f} GFLOP/s", flush=True)
  first_fit, fit_chunk = jax_fit_timer(s, args.fit_iters)
  print(f"jax fit: compile + first {args.fit_iters} iterations {first_fit:.1f} s", flush=True)
  sghmc_first = jax_sghmc(s)
  print(f"jax SGHMC full run incl. compile: {sghmc_first:.1f} s", flush=True)

  res = {"jax_fit_per_iter": [], "jax_sghmc_full": [], "torch_fit_per_iter": [],
         "torch_sghmc_per_step": []}
  for r in range(args.repeats):
    if not args.skip_torch:
      t = torch_run(args, "fit", args.fit_iters)
      res["torch_fit_per_iter"].append(t["seconds"] / t["units"])
      t = torch_run(args, "sghmc", args.torch_sghmc_steps)
      res["torch_sghmc_per_step"].append(t["seconds"] / t["units"])
    res["jax_fit_per_iter"].append(fit_chunk() / args.fit_iters)
    res["jax_sghmc_full"].append(jax_sghmc(s))
    print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.4g}" for k, v in res.items() if v),
          flush=True)

  med = {k: statistics.median(v) for k, v in res.items() if v}
  summary = {
      "machine": f"{jax.devices()[0].platform}, {__import__('os').cpu_count()} cores",
      "repeats": args.repeats,
      "jax_fit_compile_plus_first_chunk_s": first_fit,
      "jax_sghmc_first_call_incl_compile_s": sghmc_first,
      "jax_fit_200_iters_s": med["jax_fit_per_iter"] * FULL_FIT_ITERS,
      "jax_sghmc_4x84000_steps_s": med["jax_sghmc_full"],
      "critic_gflop_per_outer_iter": flops / 1e9,
      "matmul_peak_gflops": peak / 1e9,
      "jax_fit_fraction_of_peak": flops / med["jax_fit_per_iter"] / peak,
      "raw": res,
  }
  if "torch_fit_per_iter" in med:
    summary["torch_fit_200_iters_s"] = med["torch_fit_per_iter"] * FULL_FIT_ITERS
    summary["torch_sghmc_4x84000_steps_s"] = (med["torch_sghmc_per_step"] * FULL_SGHMC_STEPS
                                              * NUM_CHAINS)
    summary["torch_fit_fraction_of_peak"] = flops / med["torch_fit_per_iter"] / peak
    summary["speedup_fit"] = summary["torch_fit_200_iters_s"] / summary["jax_fit_200_iters_s"]
    summary["speedup_sghmc"] = (summary["torch_sghmc_4x84000_steps_s"]
                                / summary["jax_sghmc_4x84000_steps_s"])
  print(json.dumps({k: v for k, v in summary.items() if k != "raw"}, indent=1))
  if args.out:
    Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()
