"""Prior-data fitted networks (PFNs): priors over datasets and the Riemann ("bar") distribution.

Müller, Hollmann, Pineda Arango, Grabocka & Hutter, "Transformers Can Do Bayesian Inference"
(ICLR 2022), and Hollmann et al., "TabPFN" (ICLR 2023). A PFN q_theta(y | x, D) is trained on
datasets D ~ p(D) drawn from a prior to minimise the prior-data NLL (eq. 2 of Müller et al.)

  l_theta = E_{D ∪ {(x, y)} ~ p(D)} [ -log q_theta(y | x, D) ],

whose minimiser is the posterior predictive distribution (PPD) of the prior (their
Insight 1). This module holds the parts that do not depend on the network:

- Priors over datasets as pure functions `sample_batch(rng_key, batch_size, seq_len,
  num_features) -> (x [B, T, F], y [B, T])`: a GP prior (`gp_prior`, jaxdl.inference.gp
  kernels, fixed or hyperprior-drawn hyperparameters), a BNN prior (`bnn_prior`, random MLPs
  from `jaxdl.models.create("mlp")`), a BNN classification prior (`bnn_classification_prior`),
  a TabPFN-style structural-causal-model classification prior (`scm_classification_prior`,
  in `pfn_tabular.py`) and mixtures of them (`mixture_prior`).
- The Riemann ("bar") distribution of Müller et al. section 4.1: the real line is cut into
  buckets at equal-mass quantiles of prior samples of y, the network outputs one logit per
  bucket, and the density inside bucket k is softmax(logits)_k / width_k. The "full support"
  variant replaces the two outer buckets by half-normal tails (scale chosen so that half of
  their mass lies inside the bucket), so that every y has positive density. Everything is
  written for arbitrary leading dimensions of `logits [..., K]`.

The reference implementation (automl/PFNs `bar_distribution.py`) has known slips in the
tail handling of sample/cdf/second moment (PriorLabs/TabPFN #1200, #287); here the tails
are handled consistently and the tests check density, cdf, quantiles and samples against
each other.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import errors
from jaxdl.inference import gp

Array = jax.Array
SampleBatchFn = Callable[[Array, int, int, int], tuple[Array, Array]]

# The half-normal's median in units of its scale: sqrt(2) erfinv(1/2).
_HALFNORMAL_MEDIAN = 0.6744897501960817
_LOG_SQRT_2_OVER_PI = 0.5 * math.log(2.0 / math.pi)


# ------------------------------------------------------------------------------------------
# Riemann ("bar") distribution
# ------------------------------------------------------------------------------------------

def borders_from_samples(y_samples, num_buckets: int) -> np.ndarray:
  """Bucket borders at equal-mass quantiles of prior samples of y: [num_buckets + 1] float32.

  Müller et al. 4.1: "we choose the buckets such that each has the same probability under
  the prior". The outer borders are the smallest and largest sample; the full-support
  distribution covers the rest of the line with its half-normal tails.
  """
  y = np.asarray(y_samples, np.float64).reshape(-1)
  y = y[np.isfinite(y)]
  if num_buckets < 2:
    raise errors.ConfigError(f"num_buckets must be >= 2, got {num_buckets}; use e.g. 1000.")
  if y.size < 2 * num_buckets:
    raise errors.ConfigError(
        f"{y.size} prior samples are too few for {num_buckets} buckets; draw at least "
        f"{2 * num_buckets} (ideally 100x more).")
  borders = np.quantile(y, np.linspace(0.0, 1.0, num_buckets + 1))
  # Ties (discrete priors) would give zero-width buckets: spread them minimally.
  eps = 1e-6 * max(1.0, float(np.abs(borders).max()))
  for i in range(1, borders.size):
    borders[i] = max(borders[i], borders[i - 1] + eps)
  return borders.astype(np.float32)


class BarDistribution(NamedTuple):
  """A full-support Riemann distribution over the real line given its bucket borders.

  All methods take `logits [..., K]` (K = len(borders) - 1) and broadcast over the leading
  dimensions. The borders are a pytree leaf, so a `BarDistribution` can be passed to `jit`.
  """
  borders: Array  # [K + 1], strictly increasing.

  @property
  def num_buckets(self) -> int:
    return self.borders.shape[-1] - 1

  @property
  def widths(self) -> Array:
    return self.borders[1:] - self.borders[:-1]

  def _tail_scales(self):
    # Half-normal scale s with P(H < width) = 1/2: s = width / median(HalfNormal(1)).
    w = self.widths
    return w[0] / _HALFNORMAL_MEDIAN, w[-1] / _HALFNORMAL_MEDIAN

  def bucket_index(self, y) -> Array:
    """The bucket each y falls into, with out-of-range values in the outer buckets: int32."""
    idx = jnp.searchsorted(self.borders, y, side="right") - 1
    return jnp.clip(idx, 0, self.num_buckets - 1).astype(jnp.int32)

  def log_prob(self, logits, y) -> Array:
    """log density log q(y) for y [...] under logits [..., K]: [...]."""
    logits = jnp.asarray(logits, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    k = self.num_buckets
    log_p = jax.nn.log_softmax(logits, -1)
    idx = self.bucket_index(y)
    log_pk = jnp.take_along_axis(log_p, idx[..., None], -1)[..., 0]
    interior = log_pk - jnp.log(self.widths)[idx]
    s_left, s_right = self._tail_scales()
    b = self.borders
    # Half-normal log densities of the distance from the inner border of the outer buckets.
    d_left = jnp.maximum(b[1] - y, 0.0)
    d_right = jnp.maximum(y - b[k - 1], 0.0)
    left = (log_pk + _LOG_SQRT_2_OVER_PI - jnp.log(s_left)
            - 0.5 * jnp.square(d_left / s_left))
    right = (log_pk + _LOG_SQRT_2_OVER_PI - jnp.log(s_right)
             - 0.5 * jnp.square(d_right / s_right))
    return jnp.where(idx == 0, left, jnp.where(idx == k - 1, right, interior))

  def nll(self, logits, y) -> Array:
    """-log q(y): the PFN training loss (Müller et al. eq. 2 with the Riemann density)."""
    return -self.log_prob(logits, y)

  def _bucket_moments(self):
    b, w = self.borders, self.widths
    s_left, s_right = self._tail_scales()
    half_mean = math.sqrt(2.0 / math.pi)  # E[H] / s for H ~ HalfNormal(s).
    mean = b[:-1] + 0.5 * w
    sq = (b[:-1] ** 2 + b[:-1] * b[1:] + b[1:] ** 2) / 3.0
    # Left tail Y = b1 - H, right tail Y = b_{K-1} + H, with E[H^2] = s^2.
    ml = b[1] - half_mean * s_left
    mr = b[-2] + half_mean * s_right
    sql = b[1] ** 2 - 2.0 * b[1] * half_mean * s_left + s_left ** 2
    sqr = b[-2] ** 2 + 2.0 * b[-2] * half_mean * s_right + s_right ** 2
    mean = mean.at[0].set(ml).at[-1].set(mr)
    sq = sq.at[0].set(sql).at[-1].set(sqr)
    return mean, sq

  def mean(self, logits) -> Array:
    """E[y]: [...]."""
    m, _ = self._bucket_moments()
    return jax.nn.softmax(jnp.asarray(logits, jnp.float32), -1) @ m

  def variance(self, logits) -> Array:
    """Var[y]: [...]."""
    m, sq = self._bucket_moments()
    p = jax.nn.softmax(jnp.asarray(logits, jnp.float32), -1)
    return jnp.maximum(p @ sq - jnp.square(p @ m), 0.0)

  def cdf(self, logits, y) -> Array:
    """P(Y <= y): [...]."""
    p = jax.nn.softmax(jnp.asarray(logits, jnp.float32), -1)
    y = jnp.asarray(y, jnp.float32)
    k = self.num_buckets
    b, w = self.borders, self.widths
    s_left, s_right = self._tail_scales()
    cum = jnp.cumsum(p, -1)
    cum_before = cum - p
    idx = self.bucket_index(y)
    pk = jnp.take_along_axis(p, idx[..., None], -1)[..., 0]
    before = jnp.take_along_axis(cum_before, idx[..., None], -1)[..., 0]
    frac = jnp.clip((y - b[idx]) / w[idx], 0.0, 1.0)
    interior = before + pk * frac
    # Left tail: P(b1 - H <= y) = P(H >= b1 - y) = 1 - erf((b1 - y) / (s sqrt 2)).
    left = pk * (1.0 - jax.scipy.special.erf(jnp.maximum(b[1] - y, 0.0)
                                             / (s_left * math.sqrt(2.0))))
    right = before + pk * jax.scipy.special.erf(jnp.maximum(y - b[k - 1], 0.0)
                                                / (s_right * math.sqrt(2.0)))
    return jnp.where(idx == 0, left, jnp.where(idx == k - 1, right, interior))

  def icdf(self, logits, q) -> Array:
    """The quantile function: y with P(Y <= y) = q, for q in (0, 1) broadcast to [...]."""
    p = jax.nn.softmax(jnp.asarray(logits, jnp.float32), -1)
    q = jnp.broadcast_to(jnp.asarray(q, jnp.float32), p.shape[:-1])
    k = self.num_buckets
    b, w = self.borders, self.widths
    s_left, s_right = self._tail_scales()
    cum = jnp.cumsum(p, -1)
    # The bucket whose cumulative mass first reaches q.
    idx = jnp.sum(cum < q[..., None], -1)
    idx = jnp.clip(idx, 0, k - 1)
    pk = jnp.maximum(jnp.take_along_axis(p, idx[..., None], -1)[..., 0], 1e-30)
    before = jnp.take_along_axis(cum - p, idx[..., None], -1)[..., 0]
    rest = jnp.clip((q - before) / pk, 0.0, 1.0)
    interior = b[idx] + w[idx] * rest
    erfinv = jax.scipy.special.erfinv
    # Left: q = p0 (1 - erf(d / (s sqrt2))) => d = s sqrt2 erfinv(1 - q / p0).
    d_left = s_left * math.sqrt(2.0) * erfinv(jnp.clip(1.0 - rest, 0.0, 1.0 - 1e-7))
    d_right = s_right * math.sqrt(2.0) * erfinv(jnp.clip(rest, 0.0, 1.0 - 1e-7))
    return jnp.where(idx == 0, b[1] - d_left,
                     jnp.where(idx == k - 1, b[k - 1] + d_right, interior))

  def quantiles(self, logits, qs: Sequence[float]) -> Array:
    """Several quantiles at once: [..., len(qs)]."""
    return jnp.stack([self.icdf(logits, q) for q in qs], -1)

  def median(self, logits) -> Array:
    return self.icdf(logits, 0.5)

  def sample(self, rng_key, logits, sample_shape: tuple[int, ...] = ()) -> Array:
    """Draws y ~ q by inverting the cdf: [*sample_shape, ...]."""
    logits = jnp.asarray(logits, jnp.float32)
    n = math.prod(sample_shape)
    u = jax.random.uniform(rng_key, (n,) + logits.shape[:-1], jnp.float32, 1e-7, 1.0 - 1e-7)
    # Draws in chunks of ~2^22 bucket entries bound the memory however many samples.
    chunk = max(1, min(n, (1 << 22) // max(1, logits.size)))
    ys = jax.lax.map(lambda ui: self.icdf(logits, ui), u, batch_size=chunk)
    return ys.reshape(sample_shape + logits.shape[:-1])

  def density_grid(self, logits, y_grid) -> Array:
    """Density at each point of `y_grid [G]` for logits [..., K]: [..., G] (for plots)."""
    logits = jnp.asarray(logits, jnp.float32)
    return jnp.exp(self.log_prob(logits[..., None, :],
                                 jnp.broadcast_to(y_grid, logits.shape[:-1] + y_grid.shape)))


# ------------------------------------------------------------------------------------------
# Priors over datasets
# ------------------------------------------------------------------------------------------

def _uniform_x(rng_key, batch_size, seq_len, num_features, x_min, x_max):
  return jax.random.uniform(rng_key, (batch_size, seq_len, num_features), jnp.float32,
                            x_min, x_max)


def gp_prior(kernel: gp.Kernel | None = None, noise_variance: float = 0.01, *,
             x_min: float = 0.0, x_max: float = 1.0,
             hyperprior: Callable[[Array], tuple[gp.Kernel, Array]] | None = None,
             jitter: float = 1e-6) -> SampleBatchFn:
  """A GP prior over regression datasets (Müller et al. 5.1).

  x ~ U[x_min, x_max]^F, f ~ GP(0, kernel), y = f(x) + N(0, noise_variance).

  Args:
    kernel: a `jaxdl.inference.gp` kernel (default RBF, lengthscale 0.6, variance 1, the
      paper's setting).
    noise_variance: observation noise variance.
    x_min, x_max: the box the inputs are drawn from.
    hyperprior: optional `fn(rng_key) -> (kernel, noise_variance)` drawing hyperparameters
      per dataset (e.g. `gp_hyperprior()`); overrides `kernel` and `noise_variance`.

  Returns:
    `sample_batch(rng_key, batch_size, seq_len, num_features) -> (x [B, T, F], y [B, T])`.
  """
  kernel = gp.rbf(0.6, 1.0) if kernel is None else kernel

  def one(rng_key, x):
    k_hyp, k_eps = jax.random.split(rng_key)
    if hyperprior is None:
      kern, noise = kernel, noise_variance
    else:
      kern, noise = hyperprior(k_hyp)
    kern = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), kern)
    cov = kern(x, x) + (jnp.asarray(noise, jnp.float32) + jitter) * jnp.eye(x.shape[0])
    chol = jnp.linalg.cholesky(cov)
    return chol @ jax.random.normal(k_eps, (x.shape[0],), jnp.float32)

  def sample_batch(rng_key, batch_size, seq_len, num_features):
    k_x, k_y = jax.random.split(rng_key)
    x = _uniform_x(k_x, batch_size, seq_len, num_features, x_min, x_max)
    y = jax.vmap(one)(jax.random.split(k_y, batch_size), x)
    return x, y

  return sample_batch


def gp_hyperprior(lengthscale=(0.1, 1.0), variance=(0.5, 2.0), noise_variance=(1e-4, 0.1),
                  kind: str = "rbf"):
  """A log-uniform hyperprior over (lengthscale, variance, noise) for `gp_prior(hyperprior=)`.

  Each argument is a (low, high) range sampled log-uniformly, or a float for a fixed value.
  """
  make = {"rbf": gp.rbf, "matern12": gp.matern12, "matern32": gp.matern32,
          "matern52": gp.matern52}
  if kind not in make:
    raise errors.unknown_name("GP hyperprior kernel", kind, make)

  def draw(rng_key, rng):
    if isinstance(rng, (int, float)):
      return jnp.asarray(rng, jnp.float32)
    lo, hi = rng
    return jnp.exp(jax.random.uniform(rng_key, (), jnp.float32, math.log(lo), math.log(hi)))

  def hyperprior(rng_key):
    k1, k2, k3 = jax.random.split(rng_key, 3)
    kern = make[kind](lengthscale=draw(k1, lengthscale), variance=draw(k2, variance))
    return kern, draw(k3, noise_variance)

  return hyperprior


def _mlp_prior_params(rng_key, model, num_features, weight_std, bias_std):
  """Gaussian weights w ~ N(0, weight_std^2 / fan_in), b ~ N(0, bias_std^2) for `model`.

  The MLP's own initializer only provides the parameter structure (the shapes).
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, num_features)))
  leaves, treedef = jax.tree.flatten(shapes["params"])
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]]
  keys = jax.random.split(rng_key, len(leaves))
  out = []
  for key, leaf, path in zip(keys, leaves, paths):
    name = str(path[-1].key)
    if name == "kernel":
      std = weight_std / math.sqrt(leaf.shape[0])
    else:
      std = bias_std
    out.append(std * jax.random.normal(key, leaf.shape, jnp.float32))
  return {"params": jax.tree.unflatten(treedef, out)}


def mlp_weight_prior_scales(model, num_features, weight_std, bias_std):
  """The prior standard deviation of every MLP parameter (same tree as the params)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, num_features)))

  def scale(path, leaf):
    if str(path[-1].key) == "kernel":
      return weight_std / math.sqrt(leaf.shape[0])
    return bias_std
  return jax.tree_util.tree_map_with_path(scale, shapes["params"])


def _bnn_model(hidden, activation, num_outputs):
  from jaxdl import models  # Local import: models depend on nothing in inference.
  return models.create("mlp", num_classes=num_outputs, features=tuple(hidden),
                       activation=activation)


def bnn_prior(hidden: Sequence[int] = (32, 32), activation: str = "tanh", *,
              weight_std: float = 1.0, bias_std: float = 1.0, noise_std: float = 0.1,
              x_std: float = 1.0) -> SampleBatchFn:
  """A Bayesian-neural-network prior over regression datasets (Müller et al. 5.2).

  One random MLP per dataset (`jaxdl.models.create("mlp")`, Gaussian weights with variance
  weight_std^2 / fan_in and biases with variance bias_std^2), x ~ N(0, x_std^2),
  y = mlp(x) + N(0, noise_std^2).
  """
  def sample_batch(rng_key, batch_size, seq_len, num_features):
    model = _bnn_model(hidden, activation, 1)
    k_w, k_x, k_n = jax.random.split(rng_key, 3)
    params = jax.vmap(lambda k: _mlp_prior_params(k, model, num_features, weight_std,
                                                  bias_std))(jax.random.split(k_w, batch_size))
    x = x_std * jax.random.normal(k_x, (batch_size, seq_len, num_features), jnp.float32)
    f = jax.vmap(lambda p, xi: model.apply(p, xi)[:, 0])(params, x)
    y = f + noise_std * jax.random.normal(k_n, f.shape, jnp.float32)
    return x, y

  return sample_batch


def bnn_classification_prior(hidden: Sequence[int] = (16, 16), activation: str = "tanh", *,
                             num_classes: int = 2, weight_std: float = 1.0,
                             bias_std: float = 1.0, x_std: float = 1.0,
                             logit_scale: float = 1.0) -> SampleBatchFn:
  """A BNN prior over classification datasets: y ~ Categorical(softmax(mlp(x) * logit_scale)).

  The same random MLPs as `bnn_prior` with `num_classes` outputs; labels are drawn from the
  network's softmax, so the Bayes posterior predictive is exactly what NUTS on the same
  model (see `bnn_classification_logdensity`) computes. y is returned as float class ids.
  """
  def sample_batch(rng_key, batch_size, seq_len, num_features):
    model = _bnn_model(hidden, activation, num_classes)
    k_w, k_x, k_y = jax.random.split(rng_key, 3)
    params = jax.vmap(lambda k: _mlp_prior_params(k, model, num_features, weight_std,
                                                  bias_std))(jax.random.split(k_w, batch_size))
    x = x_std * jax.random.normal(k_x, (batch_size, seq_len, num_features), jnp.float32)
    logits = jax.vmap(lambda p, xi: model.apply(p, xi))(params, x) * logit_scale
    y = jax.random.categorical(k_y, logits, -1)
    return x, y.astype(jnp.float32)

  return sample_batch


def mixture_prior(priors: Sequence[SampleBatchFn], weights: Sequence[float] | None = None
                  ) -> SampleBatchFn:
  """Each dataset comes from `priors[i]` with probability `weights[i]`.

  Every component draws the whole batch and one is chosen per dataset, so the cost is the
  sum of the components' costs; the components must return y of the same kind.
  """
  priors = list(priors)
  w = np.ones(len(priors)) if weights is None else np.asarray(weights, np.float64)
  if len(w) != len(priors) or np.any(w < 0) or w.sum() <= 0:
    raise errors.ConfigError("mixture_prior weights must be one non-negative number per "
                             "prior, not all zero.")
  logw = jnp.log(jnp.asarray(w / w.sum(), jnp.float32))

  def sample_batch(rng_key, batch_size, seq_len, num_features):
    keys = jax.random.split(rng_key, len(priors) + 1)
    draws = [p(k, batch_size, seq_len, num_features) for p, k in zip(priors, keys[1:])]
    xs = jnp.stack([d[0] for d in draws])  # [P, B, T, F]
    ys = jnp.stack([d[1] for d in draws])  # [P, B, T]
    comp = jax.random.categorical(keys[0], logw, shape=(batch_size,))
    b = jnp.arange(batch_size)
    return xs[comp, b], ys[comp, b]

  return sample_batch
