"""Trainers of the Bayesian line: GP-induced priors + SGHMC (regression), cyclical SGHMC.

Registered trainers (select with `config.trainer`):

* `bnn_regression` (configs/uci_gp_prior.py, configs/toy1d_gp_prior.py): the UCI protocol of
  Tran et al., "All You Need is a Good Functional Prior for Bayesian Deep Learning" (JMLR
  2022, sec. 5.2; optbnn `notebooks/uci_regression.ipynb`):
    1. standardize inputs and targets with the training split's statistics;
    2. for `gp_*` priors, fit the weight prior to a GP in function space
       (`jaxdl.inference.wasserstein`): ARD RBF target with lengthscale sqrt(2 d) and
       variance 1, LogNormal hyperpriors redrawn per function, measurement sets of 70%
       training inputs and 30% uniform points in the input box;
    3. sample the posterior with scale-adapted SGHMC (`jaxdl.inference.sgmcmc`), several
       chains, burn-in and thinning;
    4. report test RMSE and Gaussian NLL (moment-matched BMA, original units; the mixture
       NLL as well) and the R-hat of test predictions across chains.
  Everything is vectorized over `config.splits` (several UCI splits at once under vmap)
  and over chains; `tools/uci_table.py` uses the same functions for whole datasets.
* `bnn_classification` (configs/cifar10_bnn_sghmc.py): a CNN with a fixed or GP-fitted
  Gaussian prior sampled by cyclical SGHMC (Zhang et al. 2020), reporting accuracy, NLL,
  ECE and Brier of the Bayesian model average.

Both write `WORKDIR/metrics.jsonl` (the final metrics on its last line) and save the fitted
prior in `WORKDIR/prior_hyper.msgpack`; a restarted run reuses the fitted prior.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from jaxdl import errors
from jaxdl.inference import gp, gradients, predictive, priors, schedules, sgmcmc, wasserstein
from jaxdl.inference.bnn import BNN
from jaxdl.train import register_trainer
from jaxdl.train.metrics import MetricWriter

PRIORS = ("fixed_gaussian", "gp_gaussian", "fixed_hierarchical", "gp_hierarchical")


# --- Data ------------------------------------------------------------------------------------

class RegressionData(NamedTuple):
  """Standardized splits stacked on a leading axis S (all splits have the same sizes)."""
  x_train: np.ndarray   # [S, N, d] standardized
  y_train: np.ndarray   # [S, N] standardized
  x_test: np.ndarray    # [S, Nt, d] standardized with the training statistics
  y_test: np.ndarray    # [S, Nt] ORIGINAL units
  y_mean: np.ndarray    # [S]
  y_std: np.ndarray     # [S]
  x_min: np.ndarray     # [S, d] box of the measurement sets
  x_max: np.ndarray     # [S, d]


def _zscore(x, mean=None, std=None, eps=1e-10):
  # optbnn's zscore_normalization: population std, eps added to the std.
  mean = x.mean(0) if mean is None else mean
  std = x.std(0) if std is None else std
  return (x - mean) / (std + eps), mean, std


def _standardize(x_train, y_train, x_test, y_test):
  xt, xm, xs = _zscore(x_train)
  yt, ym, ys = _zscore(y_train)
  xs_test = _zscore(x_test, xm, xs)[0]
  # optbnn's get_input_range: the box spans training AND test inputs (inputs only).
  lo = np.minimum(xt.min(0), xs_test.min(0))
  hi = np.maximum(xt.max(0), xs_test.max(0))
  return xt, yt, xs_test, y_test, ym, ys, lo, hi


def _stack(rows):
  cols = list(zip(*rows))
  shapes = {np.shape(c) for c in cols[0]}
  if len(shapes) != 1:
    raise errors.ConfigError(f"the selected splits have different sizes {sorted(shapes)}; "
                             "run them one at a time (config.splits with one index).")
  return RegressionData(*[np.stack(c).astype(np.float32) for c in cols])


def load_uci_splits(dataset: str, splits, data_dir=None) -> RegressionData:
  """Loads and standardizes UCI splits (via `jaxdl.data.load("uci", ...)`)."""
  from jaxdl import data as jdata
  rows = []
  for s in splits:
    tr = jdata.load("uci", "train", data_dir, dataset=dataset, split_index=int(s))
    te = jdata.load("uci", "test", data_dir, dataset=dataset, split_index=int(s))
    rows.append(_standardize(tr["inputs"], tr["targets"], te["inputs"], te["targets"]))
  return _stack(rows)


def toy1d_data(seed: int = 1, num_train: int = 64, num_test: int = 100,
               noise_variance: float = 0.1):
  """The 1D example of optbnn's notebooks: 64 inputs on [-10, 10] with a 40% gap moved
  aside, y from a GP (RBF, amplitude 1.6, lengthscale 1.8) plus noise; test points on a
  grid over [-15, 15] (the same function, drawn jointly). Returns (RegressionData, raw)."""
  rng = np.random.default_rng(seed)
  a, b = -10.0, 10.0
  x = rng.uniform(a, b, num_train)
  gap_a = a + rng.uniform() * (b - a) * 0.6
  gap_b = gap_a + (b - a) * 0.4
  inside = (gap_a < x) & (x < gap_b)
  if gap_a - a > b - gap_b:
    x[inside] = a + rng.uniform(size=inside.sum()) * (gap_a - a)
  else:
    x[inside] = gap_b + rng.uniform(size=inside.sum()) * (b - gap_b)
  x_test = np.linspace(a - 5, b + 5, num_test)
  allx = np.concatenate([x, x_test])[:, None]
  k = 1.6 ** 2 * np.exp(-0.5 * (allx - allx.T) ** 2 / 1.8 ** 2)
  f = np.linalg.cholesky(k + 1e-8 * np.eye(len(allx))) @ rng.normal(size=len(allx))
  y = f + math.sqrt(noise_variance) * rng.normal(size=len(allx))
  rows = [_standardize(x[:, None], y[:num_train], x_test[:, None], y[num_train:])]
  raw = {"x_train": x, "y_train": y[:num_train], "x_test": x_test, "f_test": f[num_train:]}
  return _stack(rows), raw


def load_regression(config) -> RegressionData:
  if config.dataset == "toy1d":
    return toy1d_data(int(config.get("data_seed", 1)))[0]
  return load_uci_splits(config.dataset, _splits(config), config.get("data_dir") or None)


def _splits(config):
  splits = config.get("splits")
  if splits is None or splits == "" or splits == ():
    return [int(config.get("split", 0))]
  if isinstance(splits, str):
    return [int(s) for s in splits.split(",") if s.strip()]
  return [int(s) for s in splits]


# --- Model, prior and GP target ----------------------------------------------------------------

def build_model(config, input_shape):
  from jaxdl import models
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  model = models.create(config.model.name, **kwargs)
  params = model.init(jax.random.key(0), jnp.zeros((1,) + tuple(input_shape)))["params"]
  apply_fn = lambda p, x: model.apply({"params": p}, x)
  return model, params, apply_fn


def build_prior(config, template):
  kind = config.prior
  if kind not in PRIORS:
    raise errors.unknown_name("prior", kind, PRIORS)
  pc = config.prior_init
  if kind.endswith("gaussian"):
    init_std = pc.fixed_std if kind.startswith("fixed") else pc.init_std
    return priors.gaussian(template, init_std=init_std, per=pc.per,
                           fan_in_scaling=pc.fan_in_scaling)
  return priors.hierarchical(template, init_shape=pc.init_shape, init_rate=pc.init_rate,
                             fan_in_scaling=pc.fan_in_scaling)


def gp_target(config, input_dim: int):
  """`target_fn(rng, x, n, data) -> [n, M]`: draws from the configured GP prior."""
  g = config.gp
  lengthscale = g.lengthscale if g.lengthscale > 0 else math.sqrt(2.0 * input_dim)
  if g.hyperprior:
    hp = {"lengthscale": gp.lognormal(np.full(input_dim, math.log(lengthscale)),
                                      g.lengthscale_log_std),
          "variance": gp.lognormal(g.variance_log_mean, g.variance_log_std)}
    transform = jax.nn.softplus if g.softplus_hyperparameters else None

    def target(key, x, n, data):
      del data
      return gp.sample_prior_with_hyperpriors(key, gp.rbf, hp, x, n, transform=transform)
  else:
    kernel = gp.rbf(np.full(input_dim, lengthscale, np.float32), g.variance)

    def target(key, x, n, data):
      del data
      return gp.sample_prior(key, kernel, x, n)
  return target


def measurement_fn(config):
  f = config.fit
  if f.measurement == "grid":
    grid = wasserstein.measurement_grid(f.grid_min, f.grid_max, f.num_points)
    return lambda key, data: grid
  if f.measurement == "mixed":
    return lambda key, data: wasserstein.measurement_set_mixed(
        key, data["x"], data["lo"], data["hi"], f.num_points, f.real_ratio)
  if f.measurement == "batch":
    return lambda key, data: wasserstein.measurement_batch(key, data["x"], f.num_points)
  raise errors.ConfigError(f"fit.measurement={f.measurement!r} is not known; use 'mixed', "
                           "'grid' or 'batch'.")


# --- Prior fitting, vectorized over splits --------------------------------------------------

def fit_priors(config, prior, apply_fn, target_fn, fit_data: dict, rng_key, *,
               callback=None):
  """Fits one prior per split (leading axis of `fit_data`) at once under vmap.

  Returns (hyper with a leading S axis, W1 history [S, num_iters]).
  """
  f = config.fit
  init, step = wasserstein.build_fit(
      prior, apply_fn, target_fn, measurement_fn(config), num_functions=f.num_functions,
      critic_steps=f.critic_steps, critic_lr=f.critic_lr, prior_lr=f.prior_lr,
      penalty_coeff=f.penalty_coeff, penalty=f.penalty, critic_hidden=f.critic_hidden,
      grad_norm_threshold=f.grad_norm_threshold if f.grad_norm_threshold > 0 else None)
  num_splits = jax.tree.leaves(fit_data)[0].shape[0]
  chunk = max(1, min(f.chunk, f.num_iters))
  run = jax.jit(jax.vmap(lambda s, d: jax.lax.scan(lambda c, _: step(c, d), s, None,
                                                   length=chunk)))
  state = jax.vmap(init)(jax.random.split(rng_key, num_splits))
  history, done = [], 0
  while done < f.num_iters:
    state, info = run(state, fit_data)
    w = np.asarray(info.wasserstein)                  # [S, chunk]
    take = min(chunk, f.num_iters - done)             # the last chunk may overshoot
    history.append(w[:, :take])
    if callback is not None:
      callback(done, w[:, :take])
    done += take
  return state.hyper, np.concatenate(history, axis=1)


# --- SGHMC, vectorized over splits and chains ------------------------------------------------

def _is_hierarchical(prior):
  return isinstance(prior, priors.HierarchicalPrior)


def make_regression_sampler(config, prior, apply_fn, num_train: int):
  """(init, advance): per (split, chain) functions to vmap.

  init(rng_key, hyper, data) -> state;  advance(rng_key, state, hyper, data, n) -> state.
  `data = {"x": [N, d], "y": [N]}` is one split's standardized training set.
  """
  s = config.sampler
  gibbs = _is_hierarchical(prior) and s.hierarchical_mode == "gibbs"
  if s.hierarchical_mode not in ("gibbs", "marginal"):
    raise errors.ConfigError(f"sampler.hierarchical_mode={s.hierarchical_mode!r}; use "
                             "'gibbs' or 'marginal'.")

  def bnn_of(hyper):
    return BNN(apply_fn, prior, hyper, "gaussian", config.noise_variance, standardized=True)

  def kernel_for(bnn, std=None):
    log_prior = (lambda p: bnn.log_prior(p, std)) if std is not None else bnn.log_prior
    grad_fn = gradients.grad_estimator(log_prior, bnn.log_likelihood, num_train,
                                       clip_norm=s.clip_norm if s.clip_norm > 0 else None)
    return sgmcmc.adaptive_sghmc_build_kernel(
        grad_fn, s.step_size, s.mdecay, s.num_burnin_steps, s.epsilon,
        temperature=s.temperature)

  def algorithm(hyper):
    bnn = bnn_of(hyper)
    if gibbs:
      return bnn, sgmcmc.with_gibbs(
          lambda std: kernel_for(bnn, std), sgmcmc.adaptive_sghmc_init,
          lambda k, p, _: prior.gibbs_std(k, hyper, bnn.to_params(p)), s.resample_prior_every)
    return bnn, sgmcmc.SamplingAlgorithm(sgmcmc.adaptive_sghmc_init, kernel_for(bnn))

  def init(rng_key, hyper, data):
    del data
    bnn, alg = algorithm(hyper)
    k_pos, k_std = jax.random.split(rng_key)
    position = bnn.init_position(k_pos)
    if gibbs:
      return alg.init(position, prior.sample_std(k_std, hyper))
    return alg.init(position)

  def advance(rng_key, state, hyper, data, num_steps: int):
    _, alg = algorithm(hyper)

    def batch_fn(key, step):
      del step  # batches with replacement: cheap for any N (optbnn shuffles epochs)
      idx = jax.random.randint(key, (s.batch_size,), 0, data["x"].shape[0])
      return {"inputs": data["x"][idx], "targets": data["y"][idx]}

    def body(st, key):
      k_b, k_s = jax.random.split(key)
      st, _ = alg.step(k_s, st, batch_fn(k_b, None))
      return st, None
    return jax.lax.scan(body, state, jax.random.split(rng_key, num_steps))[0]

  return init, advance


def _position(state):
  return state.state.position if isinstance(state, sgmcmc.WithAuxState) else state.position


def sample_regression(config, prior, apply_fn, hyper, train: dict, rng_key, *,
                      progress=None):
  """SGHMC for every (split, chain). Returns positions with leaves [S, C, K, ...] (K kept
  samples per chain after discarding the first `num_discarded`)."""
  s = config.sampler
  num_splits = train["x"].shape[0]
  init, advance = make_regression_sampler(config, prior, apply_fn, train["x"].shape[1])
  keys = jax.random.split(rng_key, (1, 1, s.num_samples + 2))
  per_chain = lambda f, ax: jax.vmap(f, in_axes=ax)
  init_v = jax.jit(jax.vmap(per_chain(init, (0, None, None)), in_axes=(0, 0, 0)))
  states = init_v(jax.random.split(keys[0, 0, -1], (num_splits, s.num_chains)), hyper, train)

  def make_advance(n):
    f = lambda k, st, h, d: advance(k, st, h, d, n)
    return jax.jit(jax.vmap(per_chain(f, (0, 0, None, None)), in_axes=(0, 0, 0, 0)))

  # One compiled block of gcd(burn-in, thinning) steps serves both (2000 and 2000 in the
  # paper's settings), so the sampler compiles once.
  block = math.gcd(s.num_burnin_steps, s.thinning) if s.num_burnin_steps > 0 else s.thinning
  run_block = make_advance(block)

  def run(key, states, num):
    for k in jax.random.split(key, num // block):
      states = run_block(jax.random.split(k, (num_splits, s.num_chains)), states, hyper, train)
    return states
  if s.num_burnin_steps > 0:
    states = run(keys[0, 0, -2], states, s.num_burnin_steps)
  kept = []
  for i in range(s.num_samples):
    states = run(keys[0, 0, i], states, s.thinning)
    if i >= s.num_discarded:
      kept.append(_position(states))
    if progress is not None:
      progress(i + 1)
  return jax.tree.map(lambda *xs: jnp.stack(xs, axis=2), *kept)


def evaluate_regression(config, prior, apply_fn, positions, data: RegressionData) -> list:
  """Per-split metrics of the Bayesian model average (original units)."""
  from numpyro.diagnostics import gelman_rubin
  scale = prior.scale

  def predict(pos, x):
    return apply_fn(jax.tree.map(lambda z, c: z * c, pos, scale), x)[:, 0]
  f = jax.jit(jax.vmap(jax.vmap(jax.vmap(predict, (0, None)), (0, None)), (0, 0)))(
      positions, jnp.asarray(data.x_test))                   # [S, C, K, Nt]
  f = np.asarray(f)
  out = []
  for i in range(f.shape[0]):
    fs = f[i].reshape(-1, f.shape[-1])
    m = predictive.regression_metrics(fs, data.y_test[i], config.noise_variance,
                                      y_mean=float(data.y_mean[i]),
                                      y_scale=float(data.y_std[i]))
    if f.shape[1] > 1 and f.shape[2] > 1:
      r = np.asarray(gelman_rubin(f[i]))
      m["r_hat_mean"], m["r_hat_max"] = float(np.mean(r)), float(np.max(r))
    out.append(m)
  return out, f


# --- Trainer ---------------------------------------------------------------------------------

def _save_hyper(workdir, hyper, history):
  Path(workdir, "prior_hyper.msgpack").write_bytes(serialization.to_bytes(hyper))
  np.save(Path(workdir, "wasserstein_history.npy"), history)


def _load_hyper(workdir, template):
  path = Path(workdir, "prior_hyper.msgpack")
  if not path.exists():
    return None
  return serialization.from_bytes(template, path.read_bytes())


def _progress(total, desc):
  try:
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False, mininterval=5)
  except ImportError:  # pragma: no cover
    return None


@register_trainer("bnn_regression")
def train_bnn_regression(config, workdir) -> dict:
  """Prior fitting (for gp_* priors) + SGHMC + test metrics; see the module docstring."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  data = load_regression(config)
  splits = _splits(config) if config.dataset != "toy1d" else [0]
  input_dim = data.x_train.shape[-1]
  _, template, apply_fn = build_model(config, (input_dim,))
  prior = build_prior(config, template)
  rng = jax.random.key(config.seed)
  k_fit, k_sample = jax.random.split(rng)
  writer = MetricWriter(workdir)
  num_splits = len(splits)
  stacked_init = jax.tree.map(lambda x: jnp.stack([x] * num_splits), prior.init())

  t0 = time.time()
  fit_seconds = 0.0
  if config.prior.startswith("gp_"):
    hyper = _load_hyper(workdir, stacked_init)
    if hyper is None:
      target = gp_target(config, input_dim)
      fit_data = {"x": jnp.asarray(data.x_train), "lo": jnp.asarray(data.x_min),
                  "hi": jnp.asarray(data.x_max)}
      bar = _progress(config.fit.num_iters, "prior fitting")

      def on_chunk(done, w):
        for j in range(w.shape[1]):
          writer.write(done + j + 1, {"fit/wasserstein": float(np.mean(w[:, j]))})
        if bar is not None:
          bar.update(w.shape[1])
      hyper, history = fit_priors(config, prior, apply_fn, target, fit_data, k_fit,
                                  callback=on_chunk)
      hyper = jax.block_until_ready(hyper)
      if bar is not None:
        bar.close()
      _save_hyper(workdir, hyper, history)
    fit_seconds = time.time() - t0
  else:
    hyper = stacked_init

  t1 = time.time()
  s = config.sampler
  bar = _progress(s.num_samples, "SGHMC samples")
  positions = sample_regression(
      config, prior, apply_fn, hyper, {"x": jnp.asarray(data.x_train),
                                       "y": jnp.asarray(data.y_train)}, k_sample,
      progress=(lambda i: bar.update(1)) if bar is not None else None)
  positions = jax.block_until_ready(positions)
  if bar is not None:
    bar.close()
  sample_seconds = time.time() - t1
  per_split, _ = evaluate_regression(config, prior, apply_fn, positions, data)

  final = {
      "test_rmse": float(np.mean([m["rmse"] for m in per_split])),
      "test_nll": float(np.mean([m["nll"] for m in per_split])),
      "test_nll_mixture": float(np.mean([m["nll_mixture"] for m in per_split])),
      "fit_seconds": fit_seconds, "sample_seconds": sample_seconds,
      "num_splits": num_splits,
  }
  if "r_hat_mean" in per_split[0]:
    final["r_hat_mean"] = float(np.mean([m["r_hat_mean"] for m in per_split]))
  if num_splits > 1:
    final["test_rmse_std"] = float(np.std([m["rmse"] for m in per_split], ddof=1))
    final["test_nll_std"] = float(np.std([m["nll"] for m in per_split], ddof=1))
  (workdir / "per_split.json").write_text(json.dumps(
      {"splits": splits, "metrics": per_split}, indent=1))
  total_steps = (config.fit.num_iters if config.prior.startswith("gp_") else 0) + (
      s.num_burnin_steps + s.num_samples * s.thinning)
  writer.write(total_steps, final)
  writer.close()
  return final


# --- Classification with cyclical SGHMC -----------------------------------------------------

def _image_data(config):
  from jaxdl import data as jdata
  info = jdata.get_info(config.dataset)
  tr = jdata.load(config.dataset, "train", config.get("data_dir") or None)
  te = jdata.load(config.dataset, "test", config.get("data_dir") or None)
  mean = np.asarray(info.mean, np.float32) if info.mean is not None else 0.0
  std = np.asarray(info.std, np.float32) if info.std is not None else 1.0

  def prep(d, limit):
    # Loaders may sort by class: a limited run takes a fixed random subset.
    n = len(d["targets"])
    idx = np.random.default_rng(0).permutation(n)[:limit] if limit else np.arange(n)
    x = np.asarray(d["inputs"][idx], np.float32)  # raw units, like info.mean / info.std
    return (x - mean) / std, np.asarray(d["targets"][idx], np.int32)
  lim_tr = config.get("num_train") or None
  lim_te = config.get("num_test") or None
  return prep(tr, lim_tr), prep(te, lim_te), info.num_classes


@register_trainer("bnn_classification")
def train_bnn_classification(config, workdir) -> dict:
  """Cyclical SGHMC (Zhang et al. 2020) on an image classifier with a Gaussian prior that is
  fixed (`fixed_gaussian`) or fitted to a GP on the images (`gp_gaussian`: RBF on the
  flattened standardized images, one independent GP per logit, measurement sets = random
  training minibatches)."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (x_tr, y_tr), (x_te, y_te), num_classes = _image_data(config)
  _, template, apply_fn = build_model(config, x_tr.shape[1:])
  if config.prior not in ("fixed_gaussian", "gp_gaussian"):
    raise errors.ConfigError(f"prior={config.prior!r}: bnn_classification supports "
                             "'fixed_gaussian' and 'gp_gaussian'.")
  prior = build_prior(config, template)
  writer = MetricWriter(workdir)
  rng = jax.random.key(config.seed)
  k_fit, k_chain, k_init = jax.random.split(rng, 3)
  hyper = prior.init()
  t0 = time.time()
  if config.prior == "gp_gaussian":
    loaded = _load_hyper(workdir, jax.tree.map(lambda x: x[None], hyper))
    if loaded is None:
      dim = int(np.prod(x_tr.shape[1:]))
      lengthscale = config.gp.lengthscale if config.gp.lengthscale > 0 else math.sqrt(2 * dim)
      kernel = gp.rbf(lengthscale, config.gp.variance)

      def target(key, x, n, data):
        # One independent GP per logit: one factorization, n * classes draws.
        del data
        f = gp.sample_prior(key, kernel, x.reshape(x.shape[0], -1), n * num_classes)
        return jnp.moveaxis(f.reshape(num_classes, n, -1), 0, -1)
      fit_data = {"x": jnp.asarray(x_tr)[None]}

      def on_chunk(done, w):
        for j in range(w.shape[1]):
          writer.write(done + j + 1, {"fit/wasserstein": float(w[0, j])})
      loaded, history = fit_priors(config, prior, apply_fn, target, fit_data, k_fit,
                                   callback=on_chunk)
      _save_hyper(workdir, loaded, history)
    hyper = jax.tree.map(lambda x: x[0], loaded)
  fit_seconds = time.time() - t0

  s = config.sampler
  n = x_tr.shape[0]
  steps_per_cycle = s.steps_per_cycle
  total = steps_per_cycle * s.num_cycles
  bnn = BNN(apply_fn, prior, hyper, "categorical", standardized=True)
  grad_fn = gradients.grad_estimator(bnn.log_prior, bnn.log_likelihood, n,
                                     clip_norm=s.clip_norm if s.clip_norm > 0 else None)
  step_size = schedules.cyclical_cosine(s.step_size, total, s.num_cycles)
  temperature = schedules.cyclical_temperature(s.temperature, total, s.num_cycles,
                                               s.exploration)
  alg = sgmcmc.sghmc(grad_fn, step_size, s.friction, temperature)
  x_dev, y_dev = jnp.asarray(x_tr), jnp.asarray(y_tr)

  def batch_fn(key, step):
    del step
    idx = jax.random.randint(key, (s.batch_size,), 0, n)
    return {"inputs": x_dev[idx], "targets": y_dev[idx]}

  def run(state, key, num):
    def body(st, k):
      k_b, k_s = jax.random.split(k)
      return alg.step(k_s, st, batch_fn(k_b, st.step))[0], None
    return jax.lax.scan(body, state, jax.random.split(key, num))[0]

  # Samples are taken at evenly spaced steps of each cycle's sampling stage, the last one at
  # the cycle's end (smallest step size).
  explore = int(round(s.exploration * steps_per_cycle))
  sample_every = max(1, (steps_per_cycle - explore) // s.samples_per_cycle)
  first = steps_per_cycle - sample_every * (s.samples_per_cycle - 1)
  run_first = jax.jit(lambda st, k: run(st, k, first))
  run_next = jax.jit(lambda st, k: run(st, k, sample_every))
  predict = jax.jit(lambda p: jax.nn.softmax(bnn.predict(p, jnp.asarray(x_te)), -1))
  state = alg.init(bnn.init_position(k_init))
  probs_sum, kept = 0.0, 0
  t1 = time.time()
  keys = jax.random.split(k_chain, s.num_cycles * s.samples_per_cycle)
  for c in range(s.num_cycles):
    for j in range(s.samples_per_cycle):
      state = (run_first if j == 0 else run_next)(state, keys[c * s.samples_per_cycle + j])
      probs_sum = probs_sum + predict(state.position)
      kept += 1
      m = predictive.classification_metrics(np.asarray(probs_sum / kept), y_te,
                                            num_bins=s.ece_bins)
      writer.write(int(state.step), {f"test_{k}": v for k, v in m.items()} | {
          "num_samples": kept})
  sample_seconds = time.time() - t1
  final = {f"test_{k}": v for k, v in predictive.classification_metrics(
      np.asarray(probs_sum / kept), y_te, num_bins=s.ece_bins).items()}
  final |= {"num_samples": kept, "fit_seconds": fit_seconds, "sample_seconds": sample_seconds,
            "samples_per_second": kept / max(sample_seconds, 1e-9),
            "steps_per_second": int(state.step) / max(sample_seconds, 1e-9)}
  writer.write(int(state.step), final)
  writer.close()
  return final

