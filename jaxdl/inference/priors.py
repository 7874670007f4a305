"""Parametrized weight priors over any Flax model's parameter pytree.

The priors of "All You Need is a Good Functional Prior for Bayesian Deep Learning" (Tran,
Rossi, Milios, Filippone; JMLR 2022), sec. 3-4, whose hyperparameters are fitted by
`jaxdl.inference.wasserstein` so that the network's function-space prior matches a GP:

* `GaussianPrior`: w ~ N(0, sigma^2 / fan_in) for weights (leaves with ndim >= 2; fan_in is
  the product of all but the last dimension, so Dense [in, out] and Conv HWIO both work) and
  b ~ N(0, sigma^2) for biases (ndim <= 1), with sigma = softplus(rho), one rho per leaf
  (`per="layer"`: one std for a layer's weights and one for its biases) or one per entry
  (`per="parameter"`). `fan_in_scaling=False` drops the 1/fan_in.
* `HierarchicalPrior`: the same, with a Gamma(softplus(a), softplus(b)) hyperprior on each
  leaf's precision 1/sigma^2 (paper eq. 11). Its marginal over the precision is a Student-t
  (`log_prob`); `gibbs_std` draws the conditional std given the weights (what optbnn does
  every few SGHMC steps), and `conditional_log_prob` is the Gaussian given that std.

Hyperparameters live in a plain dict pytree (`prior.init()`), so optax can optimize them and
`jax.vmap` draws many networks at once (`prior.sample_many`). Sampling is reparameterized:
gradients flow from the drawn weights to the hyperparameters (for Gamma draws through
`jax.random.gamma`'s implicit reparameterization).

`prior.scale` is the per-leaf fan-in factor (1/sqrt(fan_in) for weights, 1 for biases).
Samplers may run in "standardized" coordinates z = w / scale, where every coordinate has
prior std sigma (this is how optbnn parametrizes its networks; see `jaxdl.inference.bnn`).

Public API used by other parts of jaxdl (keep stable): `GaussianPrior`, `HierarchicalPrior`,
`gaussian`, `hierarchical`, their `init`, `sample`, `sample_many`, `log_prob`, `std`,
`scale`; `softplus_inverse`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import errors

PyTree = Any
_LOG_2PI = math.log(2 * math.pi)


def softplus_inverse(y):
  """x such that softplus(x) = y (y > 0), stable for large y."""
  y = np.asarray(y, np.float64)
  return np.where(y > 20, y, np.log(np.expm1(np.minimum(y, 20))))


def _leaf_shapes(template):
  """Shapes of the template's leaves (arrays or ShapeDtypeStructs) and its treedef."""
  leaves, treedef = jax.tree.flatten(template)
  return tuple(tuple(int(d) for d in np.shape(l)) for l in leaves), treedef


def _fan_in(shape):
  return int(np.prod(shape[:-1])) if len(shape) >= 2 else 1


@dataclasses.dataclass(frozen=True)
class _Layout:
  """The static part of a prior: the parameter tree's structure and shapes."""
  shapes: tuple
  treedef: Any
  fan_in_scaling: bool

  @property
  def scales(self):
    """Per-leaf factor multiplying a standardized draw: 1/sqrt(fan_in) for weights."""
    return tuple(1.0 / math.sqrt(_fan_in(s)) if (self.fan_in_scaling and len(s) >= 2) else 1.0
                 for s in self.shapes)

  def unflatten(self, leaves):
    return jax.tree.unflatten(self.treedef, list(leaves))

  def flatten(self, tree, what="params"):
    leaves, treedef = jax.tree.flatten(tree)
    if treedef != self.treedef:
      raise errors.ShapeError(
          f"{what} do not have the structure the prior was built for ({treedef} vs "
          f"{self.treedef}); build the prior from this model's params (model.init(...)['params']).")
    return leaves


def _layout(template, fan_in_scaling):
  if isinstance(template, dict) and "params" in template and len(template) == 1:
    raise errors.ShapeError("pass variables['params'] to the prior, not the whole variables "
                            "dict.")
  shapes, treedef = _leaf_shapes(template)
  if not shapes:
    raise errors.ShapeError("the parameter template has no leaves; pass model.init(...)"
                            "['params'].")
  return _Layout(shapes, treedef, fan_in_scaling)


def _gauss_logpdf(x, std):
  return -0.5 * jnp.square(x / std) - jnp.log(std) - 0.5 * _LOG_2PI


@dataclasses.dataclass(frozen=True)
class GaussianPrior:
  """Zero-mean Gaussian prior with learnable (softplus) stds; see the module docstring.

  Hyperparameters: `{"rho": tree like params}` whose leaves are scalars (per="layer") or
  shaped like the parameter (per="parameter"); std = softplus(rho).
  """
  layout: _Layout
  per: str = "layer"
  init_std: float = 1.0

  @property
  def scale(self) -> PyTree:
    return self.layout.unflatten(self.layout.scales)

  def init(self) -> dict:
    rho = softplus_inverse(self.init_std)
    leaves = [jnp.full(() if self.per == "layer" else s, rho, jnp.float32)
              for s in self.layout.shapes]
    return {"rho": self.layout.unflatten(leaves)}

  def std(self, hyper) -> PyTree:
    """Prior std of each leaf in standardized units (before the fan-in factor)."""
    return jax.tree.map(jax.nn.softplus, hyper["rho"])

  def sample(self, rng_key, hyper) -> PyTree:
    """One network's parameters, reparameterized (differentiable in `hyper`)."""
    keys = jax.random.split(rng_key, len(self.layout.shapes))
    stds = self.layout.flatten(self.std(hyper), "hyperparameters")
    leaves = [sd * c * jax.random.normal(k, s, jnp.float32)
              for k, s, sd, c in zip(keys, self.layout.shapes, stds, self.layout.scales)]
    return self.layout.unflatten(leaves)

  def sample_many(self, rng_key, hyper, num: int) -> PyTree:
    """`num` networks at once: every leaf gets a leading axis of size num."""
    return jax.vmap(lambda k: self.sample(k, hyper))(jax.random.split(rng_key, num))

  def log_prob(self, hyper, params) -> jax.Array:
    """log p(params | hyper), normalized, summed over all leaves: scalar."""
    return self.conditional_log_prob(self.std(hyper), params)

  def conditional_log_prob(self, std, params) -> jax.Array:
    """log N(params; 0, (std * scale)^2) for a given tree of standardized stds: scalar."""
    stds = self.layout.flatten(std, "stds")
    leaves = self.layout.flatten(params)
    return sum(jnp.sum(_gauss_logpdf(w, sd * c))
               for w, sd, c in zip(leaves, stds, self.layout.scales))


@dataclasses.dataclass(frozen=True)
class HierarchicalPrior:
  """Gaussian prior with a Gamma hyperprior on each leaf's precision (paper eq. 11).

    tau_l ~ Gamma(softplus(a_l), rate=softplus(b_l)),   w_l / scale_l ~ N(0, 1 / tau_l).

  Hyperparameters: `{"shape": tree of scalars, "rate": tree of scalars}` (unconstrained).
  """
  layout: _Layout
  init_shape: float = 1.0
  init_rate: float = 1.0
  eps: float = 1e-8

  @property
  def scale(self) -> PyTree:
    return self.layout.unflatten(self.layout.scales)

  def init(self) -> dict:
    def tree(v):
      return self.layout.unflatten([jnp.asarray(softplus_inverse(v), jnp.float32)
                                    for _ in self.layout.shapes])
    return {"shape": tree(self.init_shape), "rate": tree(self.init_rate)}

  def _ab(self, hyper):
    a = self.layout.flatten(hyper["shape"], "hyperparameters")
    b = self.layout.flatten(hyper["rate"], "hyperparameters")
    return [jax.nn.softplus(x) for x in a], [jax.nn.softplus(x) for x in b]

  def _std_from_precision(self, tau):
    return 1.0 / (jnp.sqrt(tau) + self.eps)

  def sample_std(self, rng_key, hyper) -> PyTree:
    """Per-leaf stds drawn from the hyperprior (reparameterized)."""
    a, b = self._ab(hyper)
    keys = jax.random.split(rng_key, len(a))
    return self.layout.unflatten([self._std_from_precision(jax.random.gamma(k, ai) / bi)
                                  for k, ai, bi in zip(keys, a, b)])

  def sample(self, rng_key, hyper) -> PyTree:
    k_std, k_w = jax.random.split(rng_key)
    stds = self.layout.flatten(self.sample_std(k_std, hyper), "stds")
    keys = jax.random.split(k_w, len(stds))
    leaves = [sd * c * jax.random.normal(k, s, jnp.float32)
              for k, s, sd, c in zip(keys, self.layout.shapes, stds, self.layout.scales)]
    return self.layout.unflatten(leaves)

  def sample_many(self, rng_key, hyper, num: int) -> PyTree:
    return jax.vmap(lambda k: self.sample(k, hyper))(jax.random.split(rng_key, num))

  def std(self, hyper) -> PyTree:
    """The prior mean of the precision turned into a std, sqrt(b / a) (for reporting)."""
    a, b = self._ab(hyper)
    return self.layout.unflatten([jnp.sqrt(bi / ai) for ai, bi in zip(a, b)])

  def log_prob(self, hyper, params) -> jax.Array:
    """Marginal log density with each precision integrated out (a Student-t per leaf).

    For a leaf with n entries and standardized values v = w / scale:
      log p = lgamma(a + n/2) - lgamma(a) + a log b - (a + n/2) log(b + |v|^2 / 2)
              - n/2 log(2 pi) - n log(scale).
    """
    a, b = self._ab(hyper)
    leaves = self.layout.flatten(params)
    total = 0.0
    for w, ai, bi, c in zip(leaves, a, b, self.layout.scales):
      n = w.size
      v2 = jnp.sum(jnp.square(w / c))
      total += (jax.scipy.special.gammaln(ai + 0.5 * n) - jax.scipy.special.gammaln(ai)
                + ai * jnp.log(bi) - (ai + 0.5 * n) * jnp.log(bi + 0.5 * v2)
                - 0.5 * n * _LOG_2PI - n * math.log(c))
    return total

  def conditional_log_prob(self, std, params) -> jax.Array:
    """log N(params; 0, (std * scale)^2) given per-leaf stds (e.g. from `gibbs_std`)."""
    stds = self.layout.flatten(std, "stds")
    leaves = self.layout.flatten(params)
    return sum(jnp.sum(_gauss_logpdf(w, sd * c))
               for w, sd, c in zip(leaves, stds, self.layout.scales))

  def gibbs_std(self, rng_key, hyper, params) -> PyTree:
    """Draws each leaf's std from its conditional given the weights (conjugate Gamma):

      tau_l | w_l ~ Gamma(a_l + n_l / 2, rate = b_l + |w_l / scale_l|^2 / 2).
    """
    a, b = self._ab(hyper)
    leaves = self.layout.flatten(params)
    keys = jax.random.split(rng_key, len(leaves))
    out = []
    for k, w, ai, bi, c in zip(keys, leaves, a, b, self.layout.scales):
      shape = ai + 0.5 * w.size
      rate = bi + 0.5 * jnp.sum(jnp.square(w / c))
      out.append(self._std_from_precision(jax.random.gamma(k, shape) / rate))
    return self.layout.unflatten(out)


def gaussian(template, *, init_std: float = 1.0, per: str = "layer",
             fan_in_scaling: bool = True) -> GaussianPrior:
  """A Gaussian prior over parameters shaped like `template` (model.init(...)['params'] or
  its `jax.eval_shape`)."""
  if per not in ("layer", "parameter"):
    raise errors.ConfigError(f"per={per!r} is not a valid prior granularity; use 'layer' or "
                             "'parameter'.")
  if not init_std > 0:
    raise errors.ConfigError(f"init_std={init_std} must be positive.")
  return GaussianPrior(_layout(template, fan_in_scaling), per, float(init_std))


def hierarchical(template, *, init_shape: float = 1.0, init_rate: float = 1.0,
                 fan_in_scaling: bool = True) -> HierarchicalPrior:
  """A Gaussian prior with Gamma(shape, rate) hyperpriors on each leaf's precision."""
  if not (init_shape > 0 and init_rate > 0):
    raise errors.ConfigError(f"init_shape={init_shape}, init_rate={init_rate} must be "
                             "positive.")
  return HierarchicalPrior(_layout(template, fan_in_scaling), float(init_shape),
                           float(init_rate))
