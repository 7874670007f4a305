r"""PFN benchmarks.

  python tools/bench_pfn.py nuts --weights bnn_cls --sizes 5,20,50 --num_datasets 8
  python tools/bench_pfn.py forward --weights gp_rbf

`nuts`: on datasets drawn from the BNN classification prior the PFN was trained on (read
from its weights json), the PFN's posterior predictive (one forward pass) against NumPyro
NUTS on exactly the same Bayesian model (Müller et al. 2022, section 5.2: "over 200-fold
speedups"). Per context size: test accuracy and NLL of both, the agreement of their
predictive probabilities, and the median wall time per dataset (compilation excluded for both:
each is warmed up on a first dataset of the same shape), and their ratio.

`forward`: PFN forward-pass throughput (datasets per second) for a few context sizes.

  python tools/bench_pfn.py train --model pfn_tabular --batch 16 --seq_len 128

`train`: seconds per training step (forward + backward + AdamW, cross-entropy on the query
rows, random data) of jaxdl's default against a baseline, compiled separately and timed in
turns, median of --repeats x 5 steps; ratio > 1: the default faster. --baseline xla: the
dense layers as the dot over [B, T, D] as flax writes it (`conv_impl("xla")`) instead of
2-D matmuls; --baseline gelu-erfc: GELU as `nn.gelu(approximate=False)` (erfc form)
instead of `jaxdl.layers.activations.gelu` (erf form).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np


def _bnn_parts(meta):
  from jaxdl.inference import pfn as pfn_lib
  p = meta["prior"]
  hidden = tuple(p.get("hidden", (16, 16)))
  model = pfn_lib._bnn_model(hidden, p.get("activation", "tanh"), int(p.get("num_classes", 2)))
  scales = pfn_lib.mlp_weight_prior_scales(model, int(meta["num_features"]),
                                           float(p.get("weight_std", 1.0)),
                                           float(p.get("bias_std", 1.0)))
  sample = jax.jit(pfn_lib.bnn_classification_prior(
      hidden, p.get("activation", "tanh"), num_classes=int(p.get("num_classes", 2)),
      weight_std=float(p.get("weight_std", 1.0)), bias_std=float(p.get("bias_std", 1.0)),
      logit_scale=float(p.get("logit_scale", 1.0))), static_argnums=(1, 2, 3))
  return model, scales, float(p.get("logit_scale", 1.0)), sample


def numpyro_bnn(model, scales, logit_scale, shapes):
  """The NumPyro version of the BNN classification prior + likelihood."""
  import numpyro
  import numpyro.distributions as dist
  flat, treedef = jax.tree_util.tree_flatten_with_path(scales)

  def bnn(x, y=None):
    leaves = []
    for (path, scale), shape in zip(flat, shapes):
      name = "/".join(str(getattr(k, "key", k)) for k in path)
      leaves.append(numpyro.sample(name, dist.Normal(0.0, scale).expand(shape).to_event(
          len(shape))))
    params = jax.tree.unflatten(treedef, leaves)
    logits = logit_scale * model.apply({"params": params}, x)
    numpyro.sample("y", dist.Categorical(logits=logits), obs=y)
  return bnn


def bench_nuts(args):
  import numpyro
  from numpyro.infer import MCMC, NUTS
  from jaxdl.inference.pfn_sklearn import load_pfn
  loaded = load_pfn(args.weights)
  meta = loaded.meta
  model, scales, logit_scale, sample = _bnn_parts(meta)
  f = int(meta["num_features"])
  shapes_tree = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, f)))["params"]
  shapes = [tuple(l.shape) for l in jax.tree.leaves(shapes_tree)]
  bnn = numpyro_bnn(model, scales, logit_scale, shapes)
  leaves_paths = jax.tree_util.tree_flatten_with_path(scales)[0]
  names = ["/".join(str(getattr(k, "key", k)) for k in p) for p, _ in leaves_paths]
  treedef = jax.tree.structure(scales)

  @jax.jit
  def nuts_predict(samples, xq):
    def one(*leaves):
      params = jax.tree.unflatten(treedef, list(leaves))
      return jax.nn.softmax(logit_scale * model.apply({"params": params}, xq), -1)
    return jnp.mean(jax.vmap(one)(*[samples[n] for n in names]), 0)

  rows = []
  for n in args.sizes:
    x, y = sample(jax.random.fold_in(jax.random.key(args.seed), n), args.num_datasets + 1,
                  n + args.num_queries, f)
    x, y = np.asarray(x), np.asarray(y).astype(np.int32)
    mcmc = MCMC(NUTS(bnn), num_warmup=args.num_warmup, num_samples=args.num_samples,
                num_chains=1, progress_bar=False, jit_model_args=True)
    res = {"pfn_t": [], "nuts_t": [], "pfn_acc": [], "nuts_acc": [], "pfn_nll": [],
           "nuts_nll": [], "tv": []}
    for i in range(args.num_datasets + 1):  # Dataset 0 warms up (compiles) both.
      xc, yc, xq, yq = x[i, :n], y[i, :n], x[i, n:], y[i, n:]
      t0 = time.perf_counter()
      logits = loaded.logits(xc[None], yc[None].astype(np.float32), xq[None],
                             chunk=args.num_queries)[0, :, :2]
      p_pfn = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1))
      t_pfn = time.perf_counter() - t0
      t0 = time.perf_counter()
      mcmc.run(jax.random.key(1000 + i), xc, yc)
      p_nuts = np.asarray(nuts_predict(mcmc.get_samples(), xq))
      t_nuts = time.perf_counter() - t0
      if i == 0:
        continue
      for name, p in (("pfn", p_pfn), ("nuts", p_nuts)):
        res[f"{name}_acc"].append(np.mean(np.argmax(p, -1) == yq))
        res[f"{name}_nll"].append(-np.mean(np.log(np.maximum(p[np.arange(len(yq)), yq],
                                                              1e-12))))
      res["pfn_t"].append(t_pfn)
      res["nuts_t"].append(t_nuts)
      res["tv"].append(0.5 * np.abs(p_pfn - p_nuts).sum(-1).mean())
    row = {"n": n, **{k: float(np.mean(v)) for k, v in res.items() if v and not
                      k.endswith("_t")},
           "pfn_seconds": float(np.median(res["pfn_t"])),
           "nuts_seconds": float(np.median(res["nuts_t"]))}
    row["speedup"] = row["nuts_seconds"] / row["pfn_seconds"]
    rows.append(row)
    print(row, flush=True)
  print(f"\nNUTS: {args.num_warmup} warmup + {args.num_samples} samples, 1 chain; "
        f"{args.num_datasets} datasets per size, {args.num_queries} test points each.")
  print("| context n | PFN acc | NUTS acc | PFN NLL | NUTS NLL | mean TV(PFN, NUTS) | "
        "PFN s/dataset | NUTS s/dataset | speedup |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['n']} | {r['pfn_acc']:.3f} | {r['nuts_acc']:.3f} | {r['pfn_nll']:.3f} | "
          f"{r['nuts_nll']:.3f} | {r['tv']:.3f} | {r['pfn_seconds']:.4f} | "
          f"{r['nuts_seconds']:.2f} | {r['speedup']:.0f}x |")


def bench_forward(args):
  from jaxdl.inference.pfn_sklearn import load_pfn
  loaded = load_pfn(args.weights)
  f = int(loaded.meta["num_features"])
  rng = np.random.default_rng(0)
  print("| context n | queries | batch | median ms per call | datasets/s |")
  print("|---|---|---|---|---|")
  for n in args.sizes:
    for batch in (1, 64):
      xc = rng.normal(size=(batch, n, f)).astype(np.float32)
      yc = rng.normal(size=(batch, n)).astype(np.float32)
      xq = rng.normal(size=(batch, args.num_queries, f)).astype(np.float32)
      loaded.logits(xc, yc, xq)  # Compile.
      ts = []
      for _ in range(args.repeats):
        t0 = time.perf_counter()
        loaded.logits(xc, yc, xq)
        ts.append(time.perf_counter() - t0)
      med = float(np.median(ts))
      print(f"| {n} | {args.num_queries} | {batch} | {1e3 * med:.2f} | {batch / med:.0f} |")


def bench_train(args):
  import optax

  from jaxdl import models
  from jaxdl.layers import activations
  from jaxdl.layers.conv import conv_impl
  from jaxdl.train.pfn import pfn_cross_entropy
  overrides = dict(emsize=args.emsize, num_layers=args.num_layers, hidden=args.hidden,
                   decoder_hidden=args.hidden)
  model = models.create(args.model, **{k: v for k, v in overrides.items() if v})
  b, t, f = args.batch, args.seq_len, args.num_features
  rng = np.random.default_rng(0)
  num_classes = model.num_classes
  batch = {"inputs": {"x": jnp.asarray(rng.standard_normal((b, t, f), np.float32)),
                      "y": jnp.asarray(rng.integers(0, num_classes, (b, t)), jnp.float32),
                      "num_context": jnp.full((b,), t // 2, jnp.int32)},
           "targets": jnp.asarray(rng.integers(0, num_classes, (b, t)), jnp.int32)}
  params = jax.jit(model.init)(jax.random.key(0), batch["inputs"])["params"]
  tx = optax.adamw(3e-4)
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params))
  print(f"{args.model}: {n_params / 1e6:.2f} M params, batch {b} x {t} rows x {f} features, "
        f"backend {jax.default_backend()}")
  baselines = {"xla": lambda: conv_impl("xla"),
               "gelu-erfc": lambda: mock.patch.object(
                   activations, "gelu", lambda x: jax.nn.gelu(x, approximate=False))}
  steps = {}
  contexts = {"default": contextlib.nullcontext, "baseline": baselines[args.baseline]}
  for name, context in contexts.items():
    def step(params, opt_state, batch):  # a new function per variant: jit caches by function
      def loss_fn(p):
        return pfn_cross_entropy(model.apply({"params": p}, batch["inputs"]), batch)[0].mean()
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss
    with context():
      t0 = time.perf_counter()
      steps[name] = jax.jit(step).lower(params, tx.init(params), batch).compile()
      print(f"compile {name}: {time.perf_counter() - t0:.1f} s")
  state = {k: (params, tx.init(params)) for k in steps}

  def run(k, n=5):
    t0 = time.perf_counter()
    for _ in range(n):
      p, o, loss = steps[k](*state[k], batch)
      state[k] = (p, o)
    jax.block_until_ready(loss)
    return (time.perf_counter() - t0) / n
  for k in steps:
    run(k, 1)
  times = {k: [] for k in steps}
  for _ in range(args.repeats):
    for k in steps:
      times[k].append(run(k))
  med = {k: float(np.median(v)) for k, v in times.items()}
  print(f"| model | batch x rows | default s/step | {args.baseline} s/step | ratio |")
  print("|---|---|---:|---:|---:|")
  print(f"| {args.model} | {b} x {t} | {med['default']:.4f} | {med['baseline']:.4f} | "
        f"{med['baseline'] / med['default']:.2f}x |")


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("what", choices=["nuts", "forward", "train"])
  ap.add_argument("--model", default="pfn_tabular", help="train: a registered PFN")
  ap.add_argument("--batch", type=int, default=16, help="train: datasets per step")
  ap.add_argument("--seq_len", type=int, default=128, help="train: rows per dataset")
  ap.add_argument("--num_features", type=int, default=100, help="train")
  ap.add_argument("--emsize", type=int, default=0, help="train: override (0: the model's)")
  ap.add_argument("--num_layers", type=int, default=0, help="train: override")
  ap.add_argument("--hidden", type=int, default=0, help="train: MLP widths override")
  ap.add_argument("--baseline", choices=["xla", "gelu-erfc"], default="xla",
                  help="train: what the default is timed against (see above)")
  ap.add_argument("--weights", default="bnn_cls")
  ap.add_argument("--sizes", default="5,20,50")
  ap.add_argument("--num_datasets", type=int, default=10)
  ap.add_argument("--num_queries", type=int, default=100)
  ap.add_argument("--num_warmup", type=int, default=500)
  ap.add_argument("--num_samples", type=int, default=500)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--seed", type=int, default=7)
  args = ap.parse_args()
  args.sizes = [int(s) for s in args.sizes.split(",")]
  {"nuts": bench_nuts, "forward": bench_forward, "train": bench_train}[args.what](args)


if __name__ == "__main__":
  main()
