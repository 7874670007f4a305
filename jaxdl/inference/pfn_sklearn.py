"""scikit-learn estimators backed by trained PFNs: `PFNRegressor` and `PFNClassifier`.

`fit` only validates and stores the training rows (the context); `predict*` is one forward
pass of the PFN transformer over context + queries (Müller et al. 2022, figure 1; TabPFN,
Hollmann et al. 2023, section 4). Queries are independent given the context, so they are
processed in fixed-size chunks; context and query blocks are padded to a few fixed sizes so
that repeated calls reuse compiled code.

Shipped weights live in `jaxdl/inference/pfn_weights/<name>.msgpack` (Flax-serialized params)
with `<name>.json` (model name and options, Riemann borders, the training prior and run).
`tools/pfn_export.py` writes them from a training workdir.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from jaxdl import errors
from jaxdl.inference import gp
from jaxdl.inference.pfn import BarDistribution

WEIGHTS_DIR = Path(__file__).resolve().parent / "pfn_weights"
_GP_KERNELS = {"rbf": gp.rbf, "matern12": gp.matern12, "matern32": gp.matern32,
               "matern52": gp.matern52}


# ------------------------------------------------------------------------------------------
# Weights

class LoadedPFN:
  """A PFN ready for inference: the Flax module, its params, metadata and a jitted apply."""

  def __init__(self, meta: dict, params):
    from jaxdl import models
    self.meta = meta
    overrides = {k: (tuple(v) if isinstance(v, list) else v)
                 for k, v in meta["model"].items() if k != "name"}
    self.model = models.create(meta["model"]["name"], **overrides)
    self.params = params
    self.bar = (BarDistribution(jnp.asarray(meta["borders"], jnp.float32))
                if meta.get("borders") is not None else None)
    self._apply = jax.jit(lambda p, x, y, nc, rows: self.model.apply(
        {"params": p}, {"x": x, "y": y, "num_context": nc}, context_rows=rows),
        static_argnums=4)

  def logits(self, x_ctx, y_ctx, x_query, *, chunk: int = 512) -> np.ndarray:
    """Logits for queries given the context, per dataset of a batch.

    Args:
      x_ctx: [E, n, F]; y_ctx: [E, n] (E datasets, e.g. ensemble members, same n).
      x_query: [E, m, F].
      chunk: queries per forward pass.

    Returns:
      [E, m, K] float32.
    """
    e, n, f = x_ctx.shape
    m = x_query.shape[1]
    n_pad = _bucket(n, 8)
    q = min(_bucket(m, 8), _bucket(chunk, 8))
    xc = np.zeros((e, n_pad, f), np.float32)
    yc = np.zeros((e, n_pad), np.float32)
    xc[:, :n], yc[:, :n] = x_ctx, y_ctx
    nc = np.full((e,), n, np.int32)
    out = []
    for start in range(0, m, q):
      xq = np.zeros((e, q, f), np.float32)
      part = x_query[:, start:start + q]
      xq[:, :part.shape[1]] = part
      x = np.concatenate([xc, xq], 1)
      y = np.concatenate([yc, np.zeros((e, q), np.float32)], 1)
      logits = self._apply(self.params, x, y, nc, n_pad)
      out.append(np.asarray(logits[:, n_pad:n_pad + part.shape[1]]))
    return np.concatenate(out, 1)


def _bucket(n: int, minimum: int) -> int:
  """The padded size for n rows: the next power of two (at least `minimum`)."""
  return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


@functools.lru_cache(maxsize=8)
def load_pfn(weights: str = "gp_rbf") -> LoadedPFN:
  """Loads shipped weights by name (`jaxdl/inference/pfn_weights/<name>`) or from a path
  (`/dir/name`, `/dir/name.json` or `/dir/name.msgpack`)."""
  path = Path(weights)
  if path.suffix in (".json", ".msgpack"):
    path = path.with_suffix("")
  if not path.parent.name or str(path.parent) == ".":
    path = WEIGHTS_DIR / path.name
  meta_path, params_path = path.with_suffix(".json"), path.with_suffix(".msgpack")
  if not meta_path.exists() or not params_path.exists():
    shipped = sorted(p.stem for p in WEIGHTS_DIR.glob("*.json"))
    raise errors.DataNotFoundError(
        f"PFN weights {weights!r} not found (looked for {meta_path} and {params_path}); "
        f"shipped weights: {', '.join(shipped) or 'none'}; train and export your own with "
        "tools/pfn_export.py.")
  meta = json.loads(meta_path.read_text())
  params = serialization.msgpack_restore(params_path.read_bytes())
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  return LoadedPFN(meta, params)


# ------------------------------------------------------------------------------------------
# Input validation (one-line errors)

def _as_2d(X, what: str, num_features: int | None = None, max_features: int | None = None):
  try:
    X = np.asarray(X, dtype=np.float32)
  except (TypeError, ValueError) as e:
    raise errors.ShapeError(f"{what} must be numeric (an array of numbers); converting it "
                            f"failed: {str(e).splitlines()[0]}.") from None
  if X.ndim == 1 and num_features == 1:
    X = X[:, None]
  if X.ndim != 2:
    raise errors.ShapeError(f"{what} must be a 2-D array [n_samples, n_features]; got shape "
                            f"{X.shape} (use X.reshape(-1, 1) for a single feature).")
  if X.shape[0] == 0:
    raise errors.ShapeError(f"{what} has no rows; pass at least one sample.")
  if not np.all(np.isfinite(X)):
    raise errors.ShapeError(f"{what} contains NaN or infinite values; impute or drop them "
                            "first.")
  if num_features is not None and X.shape[1] != num_features:
    raise errors.ShapeError(f"{what} has {X.shape[1]} features but the model expects "
                            f"{num_features}; pass the same columns as in fit.")
  if max_features is not None and X.shape[1] > max_features:
    raise errors.ShapeError(f"{what} has {X.shape[1]} features; this PFN takes at most "
                            f"{max_features} (select features first, e.g. with PCA).")
  return X


def _as_1d(y, what: str, n: int, dtype=np.float32):
  y = np.asarray(y)
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.ndim != 1:
    raise errors.ShapeError(f"{what} must be 1-D [n_samples]; got shape {y.shape}.")
  if y.shape[0] != n:
    raise errors.ShapeError(f"{what} has {y.shape[0]} entries but X has {n} rows; pass one "
                            "target per row.")
  if dtype is not None:
    try:
      y = y.astype(dtype)
    except (TypeError, ValueError):
      raise errors.ShapeError(f"{what} must be numeric for regression.") from None
    if not np.all(np.isfinite(y)):
      raise errors.ShapeError(f"{what} contains NaN or infinite values; drop those rows.")
  return y


# ------------------------------------------------------------------------------------------
# Regression

class PFNRegressor(RegressorMixin, BaseEstimator):
  """Bayesian regression in one forward pass with a PFN trained on a GP prior.

  The shipped model ("gp_rbf") was trained on the prior

    x ~ U[0, 1] (one feature), f ~ GP(0, RBF(lengthscale=0.2, variance=1)),
    y = f(x) + N(0, 0.1),

  with 0 to 32 context rows (configs/pfn_gp.py; 3,250 Adam steps of 32 datasets on a CPU, of
  the config's 8,000), so it approximates the exact GP posterior predictive of that prior:
  on fresh prior draws its NLL is within 0.008-0.050 nats per point of the exact GP's for 0
  to 32 context rows (RESULTS.md). `.prior` returns the prior as a dict.
  Inputs outside [x_min, x_max] or more context rows than `max_context` are outside what it
  was trained on: the latter raises an error.

  Args:
    weights: shipped weights name or a path (see `load_pfn`).
    standardize: rescale X to [x_min, x_max] (min-max over the training rows) and y to the
      prior's marginal standard deviation before the forward pass, and map the predictions
      back (log densities include the Jacobian). Off by default: with it on, data are no
      longer judged under the fixed prior.
    query_batch_size: queries per forward pass.

  Attributes after fit: `X_`, `y_` (the context), `n_features_in_`.
  """

  def __init__(self, weights: str = "gp_rbf", standardize: bool = False,
               query_batch_size: int = 512):
    self.weights = weights
    self.standardize = standardize
    self.query_batch_size = query_batch_size

  # --- The prior the network was trained on.
  @property
  def _pfn(self) -> LoadedPFN:
    return load_pfn(self.weights)

  @property
  def prior(self) -> dict[str, Any]:
    """The training prior: kernel (a jaxdl.inference.gp kernel), noise_variance, x_min,
    x_max, num_features, max_context."""
    meta = self._pfn.meta
    p = meta["prior"]
    if p.get("kind", "gp") != "gp":
      raise errors.ConfigError(f"PFN weights {self.weights!r} were not trained on a "
                               "fixed-hyperparameter GP prior; see their .json for the prior.")
    kernel = _GP_KERNELS[p.get("kernel", "rbf")](lengthscale=p["lengthscale"],
                                                 variance=p["variance"])
    return {"kernel": kernel, "noise_variance": float(p["noise_variance"]),
            "x_min": float(p.get("x_min", 0.0)), "x_max": float(p.get("x_max", 1.0)),
            "num_features": int(meta["num_features"]), "max_context": int(meta["max_context"])}

  @property
  def bar_distribution(self) -> BarDistribution:
    """The Riemann distribution whose logits `predict_logits` returns."""
    return self._pfn.bar

  # --- sklearn API.
  def fit(self, X, y):
    """Stores (X, y) as the context after validating them. X: [n, num_features]; y: [n]."""
    pfn = self._pfn
    if pfn.bar is None:
      raise errors.ConfigError(f"PFN weights {self.weights!r} are a classifier; use "
                               "PFNClassifier.")
    num_features, max_context = int(pfn.meta["num_features"]), int(pfn.meta["max_context"])
    X = _as_2d(X, "X", num_features)
    y = _as_1d(y, "y", X.shape[0])
    if X.shape[0] > max_context:
      raise errors.ShapeError(
          f"PFNRegressor got {X.shape[0]} training rows but its PFN was trained with at most "
          f"{max_context} context rows; pass a subset (e.g. X[:{max_context}]).")
    self.n_features_in_ = X.shape[1]
    self.X_, self.y_ = X, y
    if self.standardize:
      p = self.prior
      lo, hi = X.min(0), X.max(0)
      self._x_scale = np.where(hi > lo, (p["x_max"] - p["x_min"]) / np.maximum(hi - lo, 1e-12),
                               1.0).astype(np.float32)
      self._x_shift = lo
      prior_std = math.sqrt(float(p["kernel"].diag(np.zeros((1, 1)))[0]) + p["noise_variance"])
      self._y_mean = float(y.mean())
      self._y_scale = float(prior_std / max(y.std(), 1e-12)) if len(y) > 1 else 1.0
    return self

  def _x(self, X):
    if not self.standardize:
      return X
    return (X - self._x_shift) * self._x_scale + self.prior["x_min"]

  def _y(self, y):
    return (y - self._y_mean) * self._y_scale if self.standardize else y

  def predict_logits(self, X) -> np.ndarray:
    """Riemann-distribution logits for each row of X: [m, num_buckets] (in the standardized
    y space when `standardize` is on)."""
    check_is_fitted(self, "X_")
    X = _as_2d(X, "X", self.n_features_in_)
    out = self._pfn.logits(self._x(self.X_)[None], self._y(self.y_)[None], self._x(X)[None],
                           chunk=self.query_batch_size)
    return out[0]

  def predict(self, X) -> np.ndarray:
    """The posterior predictive mean for each row of X: [m]."""
    mean = np.asarray(self.bar_distribution.mean(self.predict_logits(X)))
    return mean / self._y_scale + self._y_mean if self.standardize else mean

  def predict_std(self, X) -> np.ndarray:
    """The posterior predictive standard deviation (of a noisy observation): [m]."""
    std = np.sqrt(np.asarray(self.bar_distribution.variance(self.predict_logits(X))))
    return std / self._y_scale if self.standardize else std

  def predict_log_density(self, X, y) -> np.ndarray:
    """log p(y_i | x_i, context) for each row: [m]."""
    X = _as_2d(X, "X", getattr(self, "n_features_in_", None))
    y = _as_1d(y, "y", X.shape[0])
    lp = np.asarray(self.bar_distribution.log_prob(self.predict_logits(X), self._y(y)))
    return lp + math.log(self._y_scale) if self.standardize else lp

  def predict_quantiles(self, X, quantiles=(0.05, 0.5, 0.95)) -> np.ndarray:
    """Predictive quantiles: [m, len(quantiles)]."""
    qs = np.asarray(self.bar_distribution.quantiles(self.predict_logits(X), tuple(quantiles)))
    return qs / self._y_scale + self._y_mean if self.standardize else qs

  def sample(self, X, num_samples: int = 1, seed: int = 0) -> np.ndarray:
    """Draws from each row's predictive (independently per row): [num_samples, m]."""
    s = np.asarray(self.bar_distribution.sample(jax.random.key(seed), self.predict_logits(X),
                                                (num_samples,)))
    return s / self._y_scale + self._y_mean if self.standardize else s


# ------------------------------------------------------------------------------------------
# Classification

class PFNClassifier(ClassifierMixin, BaseEstimator):
  """TabPFN-style classification in one forward pass (Hollmann et al. 2023).

  The shipped model ("tabular") was trained on the structural-causal-model / random-MLP
  classification prior of `jaxdl.inference.pfn_tabular` (configs/pfn_tabular.py) for only
  1,000 steps of 16 datasets with 8 to 100 context rows on a shared 2-core CPU (TabPFN v1:
  a 12-layer model, ~1024-row datasets, days on a GPU), so it is far from TabPFN's accuracy;
  RESULTS.md compares it with scikit-learn baselines on OpenML-CC18. Limits: at most
  `max_context` training rows (1000; more than the 100 it saw in training: `subsample=100`
  keeps each ensemble member inside its training range), `max_features` features (100) and
  `max_classes` classes (10).

  Preprocessing (TabPFN section 4): constant features dropped; features standardized with
  the training rows' mean and standard deviation, with a Yeo-Johnson power transform in half
  of the ensemble members; values beyond 4 standard deviations softly clipped; features
  zero-padded to `max_features` and scaled by sqrt(max_features / used), as in the prior.
  Ensemble: member i rotates the feature order and shifts the class labels by i (mod the
  number of classes); their class probabilities are mapped back and averaged.

  Args:
    weights: shipped weights name or a path (see `load_pfn`).
    n_estimators: ensemble members (1 disables ensembling).
    subsample: if set and there are more training rows, each ensemble member sees a
      different random subset of this many rows (every class kept), e.g. the context size
      the network was trained with; None uses all rows in every member.
    random_state: seed for the feature permutations and subsets.
    query_batch_size: queries per forward pass.
  """

  def __init__(self, weights: str = "tabular", n_estimators: int = 8,
               subsample: int | None = None, random_state: int = 0,
               query_batch_size: int = 512):
    self.weights = weights
    self.n_estimators = n_estimators
    self.subsample = subsample
    self.random_state = random_state
    self.query_batch_size = query_batch_size

  @property
  def _pfn(self) -> LoadedPFN:
    return load_pfn(self.weights)

  def fit(self, X, y):
    """Stores the training rows (the context) and the preprocessing statistics."""
    pfn = self._pfn
    if pfn.bar is not None:
      raise errors.ConfigError(f"PFN weights {self.weights!r} are a regressor; use "
                               "PFNRegressor.")
    meta = pfn.meta
    max_features, max_context = int(meta["num_features"]), int(meta["max_context"])
    max_classes = int(meta["max_classes"])
    if not isinstance(self.n_estimators, (int, np.integer)) or self.n_estimators < 1:
      raise errors.ConfigError(f"n_estimators must be a positive integer, got "
                               f"{self.n_estimators!r}.")
    X = _as_2d(X, "X", max_features=max_features)
    y = _as_1d(y, "y", X.shape[0], dtype=None)
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
      raise errors.ShapeError("y contains NaN or infinite labels; drop those rows.")
    if y.dtype.kind not in "biufUSO":
      raise errors.ShapeError(f"y must hold class labels (numbers or strings); got dtype "
                              f"{y.dtype}.")
    if X.shape[0] > max_context:
      raise errors.ShapeError(
          f"PFNClassifier got {X.shape[0]} training rows; its PFN takes at most {max_context} "
          f"(subsample the training set, e.g. with train_test_split(train_size={max_context})).")
    self.classes_, y_enc = np.unique(y, return_inverse=True)
    if len(self.classes_) > max_classes:
      raise errors.ShapeError(f"PFNClassifier got {len(self.classes_)} classes; its PFN "
                              f"handles at most {max_classes}.")
    self.n_features_in_ = X.shape[1]
    self.max_features_ = max_features
    keep = X.std(0) > 1e-8 if X.shape[0] > 1 else np.ones(X.shape[1], bool)
    self.keep_ = keep
    Xk = X[:, keep]
    self.mean_, self.std_ = Xk.mean(0), np.maximum(Xk.std(0), 1e-8)
    from sklearn.preprocessing import PowerTransformer
    self.power_ = (PowerTransformer(standardize=True).fit(Xk)
                   if Xk.shape[1] and X.shape[0] > 2 else None)
    self.X_, self.y_ = X, y_enc.astype(np.int64)
    rng = np.random.default_rng(self.random_state)
    d = int(keep.sum())
    self.feature_orders_ = [np.roll(rng.permutation(d) if i else np.arange(d), i)
                            for i in range(self.n_estimators)]
    n = X.shape[0]
    if self.subsample is not None and not (isinstance(self.subsample, (int, np.integer))
                                           and self.subsample >= len(self.classes_)):
      raise errors.ConfigError(f"subsample must be None or an integer >= the number of "
                               f"classes ({len(self.classes_)}), got {self.subsample!r}.")
    self.rows_ = []
    for _ in range(self.n_estimators):
      if self.subsample is None or n <= self.subsample:
        self.rows_.append(np.arange(n))
        continue
      # One random row of every class, then random others.
      first = np.array([rng.choice(np.flatnonzero(y_enc == c)) for c in range(
          len(self.classes_))])
      rest = rng.permutation(np.setdiff1d(np.arange(n), first))[:self.subsample - len(first)]
      self.rows_.append(rng.permutation(np.concatenate([first, rest])))
    return self

  def _features(self, X, member: int) -> np.ndarray:
    Xk = X[:, self.keep_]
    if member % 2 == 1 and self.power_ is not None:
      with np.errstate(all="ignore"):
        Z = self.power_.transform(Xk)
    else:
      Z = (Xk - self.mean_) / self.std_
    Z = np.nan_to_num(Z.astype(np.float32))
    # Soft clipping of outliers beyond 4 standard deviations (TabPFN's remove_outliers).
    Z = np.where(np.abs(Z) > 4.0, np.sign(Z) * (4.0 + np.log1p(np.maximum(np.abs(Z) - 4.0, 0.0))),
                 Z)
    Z = Z[:, self.feature_orders_[member]]
    d = Z.shape[1]
    out = np.zeros((X.shape[0], self.max_features_), np.float32)
    if d:
      out[:, :d] = Z * math.sqrt(self.max_features_ / d)
    return out

  def predict_proba(self, X) -> np.ndarray:
    """Class probabilities [m, n_classes] (columns in the order of `classes_`)."""
    check_is_fitted(self, "X_")
    X = _as_2d(X, "X", self.n_features_in_)
    k = len(self.classes_)
    xs_c, ys_c, xs_q, shifts = [], [], [], []
    for i in range(self.n_estimators):
      shift = i % k
      rows = self.rows_[i]
      xs_c.append(self._features(self.X_[rows], i))
      ys_c.append(((self.y_[rows] + shift) % k).astype(np.float32))
      xs_q.append(self._features(X, i))
      shifts.append(shift)
    logits = self._pfn.logits(np.stack(xs_c), np.stack(ys_c), np.stack(xs_q),
                              chunk=self.query_batch_size)[..., :k]
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1))  # [E, m, k]
    # Undo each member's label shift: its class c is the original class (c - shift) mod k.
    back = np.stack([np.roll(p, -s, axis=-1) for p, s in zip(probs, shifts)])
    return back.mean(0)

  def predict(self, X) -> np.ndarray:
    return self.classes_[np.argmax(self.predict_proba(X), -1)]
