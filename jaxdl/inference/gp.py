"""Gaussian-process kernels, prior sampling and exact regression posteriors.

Rasmussen & Williams, "Gaussian Processes for Machine Learning" (2006): kernels (ch. 4),
the posterior of the latent function (eq. 2.25-2.26) and the log marginal likelihood
(eq. 2.30, algorithm 2.1). The exact posterior is the reference the functional-prior and
PFN code is checked against.

A kernel is a callable `k(x1 [n1, d], x2 [n2, d]) -> [n1, n2]`. Kernels are pytrees (their
hyperparameters are leaves), so they can be built from traced values, passed through `jit`
and `vmap`ped over hyperparameters. `k1 + k2` and `k1 * k2` build sums and products.

  k = gp.rbf(lengthscale=0.6, variance=1.0)
  mean, cov = gp.posterior(k, x_train, y_train, x_test, noise_variance=1e-4)
  f = gp.sample_prior(rng_key, k, x, num_samples=128)                      # [128, n]
  # Hyperpriors redrawn per function (the functional-prior paper's UCI target):
  f = gp.sample_prior_with_hyperpriors(
      rng_key, gp.rbf, {"lengthscale": gp.lognormal(jnp.log(ls) * jnp.ones(d), 1.0),
                        "variance": gp.lognormal(0.1, 1.0)}, x, num_samples=128)

Public API used by other parts of jaxdl (keep stable): the kernels (`rbf`, `matern12`,
`matern32`, `matern52`, `periodic`, `linear`, `constant`, `white`, `+`, `*`), `sample_prior`,
`sample_prior_with_hyperpriors`, `posterior`, `log_marginal_likelihood`,
`predictive_log_density`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _as_2d(x):
  x = jnp.asarray(x)
  return x[:, None] if x.ndim == 1 else x


def _sq_dist(x1, x2, lengthscale):
  """Squared distances between rows of x1/lengthscale and x2/lengthscale: [n1, n2]."""
  a = _as_2d(x1) / lengthscale
  b = _as_2d(x2) / lengthscale
  d2 = (jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * a @ b.T)
  return jnp.maximum(d2, 0.0)


def _dist(x1, x2, lengthscale):
  # sqrt has an infinite gradient at 0: take it where it is safe.
  d2 = _sq_dist(x1, x2, lengthscale)
  pos = d2 > 1e-30
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, d2, 1.0)), 0.0)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Kernel:
  """A covariance function. `kind` selects the formula; `params` are its hyperparameters."""
  kind: str
  params: dict[str, Any]

  def __call__(self, x1, x2=None):
    x2 = x1 if x2 is None else x2
    return _FORMULAS[self.kind](x1, x2, **self.params)

  def diag(self, x):
    """k(x_i, x_i) for each row: [n]."""
    if self.kind in ("rbf", "matern12", "matern32", "matern52", "periodic"):
      return jnp.broadcast_to(jnp.asarray(self.params["variance"]), (_as_2d(x).shape[0],))
    return jnp.diagonal(self(x, x))

  def __add__(self, other):
    return Kernel("sum", {"k1": self, "k2": other})

  def __mul__(self, other):
    return Kernel("product", {"k1": self, "k2": other})

  def tree_flatten(self):
    keys = tuple(sorted(self.params))
    return tuple(self.params[k] for k in keys), (self.kind, keys)

  @classmethod
  def tree_unflatten(cls, aux, children):
    kind, keys = aux
    return cls(kind, dict(zip(keys, children)))


def _rbf(x1, x2, lengthscale, variance):
  return variance * jnp.exp(-0.5 * _sq_dist(x1, x2, lengthscale))


def _matern12(x1, x2, lengthscale, variance):
  return variance * jnp.exp(-_dist(x1, x2, lengthscale))


def _matern32(x1, x2, lengthscale, variance):
  r = jnp.sqrt(3.0) * _dist(x1, x2, lengthscale)
  return variance * (1.0 + r) * jnp.exp(-r)


def _matern52(x1, x2, lengthscale, variance):
  r = jnp.sqrt(5.0) * _dist(x1, x2, lengthscale)
  return variance * (1.0 + r + r * r / 3.0) * jnp.exp(-r)


def _periodic(x1, x2, lengthscale, period, variance):
  # MacKay's periodic kernel: exp(-2 sin^2(pi |x - x'| / p) / l^2), summed over dimensions.
  a, b = _as_2d(x1), _as_2d(x2)
  diff = a[:, None, :] - b[None, :, :]
  s = jnp.sin(jnp.pi * diff / period) / lengthscale
  return variance * jnp.exp(-2.0 * jnp.sum(s * s, -1))


def _linear(x1, x2, variance, offset):
  return variance * (_as_2d(x1) @ _as_2d(x2).T) + offset


def _constant(x1, x2, variance):
  return jnp.full((_as_2d(x1).shape[0], _as_2d(x2).shape[0]), variance)


def _white(x1, x2, variance):
  # Only equal on identical inputs; used as k(x, x) + noise.
  return variance * (_sq_dist(x1, x2, 1.0) < 1e-24).astype(jnp.result_type(x1))


_FORMULAS: dict[str, Callable] = {
    "rbf": _rbf, "matern12": _matern12, "matern32": _matern32, "matern52": _matern52,
    "periodic": _periodic, "linear": _linear, "constant": _constant, "white": _white,
    "sum": lambda x1, x2, k1, k2: k1(x1, x2) + k2(x1, x2),
    "product": lambda x1, x2, k1, k2: k1(x1, x2) * k2(x1, x2),
}


def _param(value):
  # Keep numpy/Python values in float64 so that `posterior(..., dtype=jnp.float64)` is exact;
  # traced or jax values are kept as they are.
  return value if isinstance(value, jax.Array) else np.asarray(value, dtype=np.float64)


def rbf(lengthscale=1.0, variance=1.0) -> Kernel:
  """Squared exponential; `lengthscale` a scalar or one per input dimension (ARD)."""
  return Kernel("rbf", {"lengthscale": _param(lengthscale), "variance": _param(variance)})


def matern12(lengthscale=1.0, variance=1.0) -> Kernel:
  """Matern nu=1/2 (exponential / Ornstein-Uhlenbeck)."""
  return Kernel("matern12", {"lengthscale": _param(lengthscale),
                             "variance": _param(variance)})


def matern32(lengthscale=1.0, variance=1.0) -> Kernel:
  return Kernel("matern32", {"lengthscale": _param(lengthscale),
                             "variance": _param(variance)})


def matern52(lengthscale=1.0, variance=1.0) -> Kernel:
  return Kernel("matern52", {"lengthscale": _param(lengthscale),
                             "variance": _param(variance)})


def periodic(lengthscale=1.0, period=1.0, variance=1.0) -> Kernel:
  return Kernel("periodic", {"lengthscale": _param(lengthscale),
                             "period": _param(period), "variance": _param(variance)})


def linear(variance=1.0, offset=0.0) -> Kernel:
  """Dot-product kernel variance * x.x' + offset."""
  return Kernel("linear", {"variance": _param(variance), "offset": _param(offset)})


def constant(variance=1.0) -> Kernel:
  return Kernel("constant", {"variance": _param(variance)})


def white(variance=1.0) -> Kernel:
  return Kernel("white", {"variance": _param(variance)})


def _cholesky(k, jitter):
  """Cholesky factor of k + jitter * I, raising the jitter when the factorization fails.

  Like the reference's doubling loop, but without Python control flow on traced values: the
  factorization is attempted with `jitter` and with 1e-5, 1e-3 and 1e-1 times the mean
  diagonal, and the first finite factor is kept, so the function stays jit- and vmap-able.
  Well-conditioned matrices get exactly `jitter`.

  All attempts go through ONE batched `cholesky` call: on CPU, jaxlib's batched LAPACK
  potrf splits its batch over the intra-op thread pool and waits for it, so two such calls
  running concurrently on a 2-thread pool can deadlock (observed with jax 0.10.2 on 2 cores);
  one call at a time is safe.
  """
  n = k.shape[-1]
  eye = jnp.eye(n, dtype=k.dtype)
  scale = jnp.maximum(jnp.mean(jnp.diagonal(k, axis1=-2, axis2=-1), -1), 1e-30)
  jitters = jnp.stack([jnp.full_like(scale, jitter)] +
                      [rel * scale for rel in (1e-5, 1e-3, 1e-1)])      # [4, ...]
  chols = jnp.linalg.cholesky(k[None] + jitters[..., None, None] * eye)  # [4, ..., n, n]
  ok = jnp.all(jnp.isfinite(chols), axis=(-2, -1))                       # [4, ...]
  first = jnp.argmax(ok, axis=0)                                          # [...]
  return jnp.take_along_axis(chols, first[None, ..., None, None], axis=0)[0]


def sample_prior(rng_key, kernel: Kernel, x, num_samples: int, *, jitter: float = 1e-6):
  """Draws `num_samples` functions f ~ GP(0, kernel) at the rows of x: [num_samples, n]."""
  x = _as_2d(x)
  chol = _cholesky(kernel(x, x), jitter)
  eps = jax.random.normal(rng_key, (num_samples, x.shape[0]), chol.dtype)
  return eps @ chol.T


# --- Hyperpriors: GP functions whose kernel hyperparameters are redrawn per function -------
#
# The functional-prior paper's UCI target (Tran et al. 2022, sec. 5.2; optbnn
# `GPModel.sample_functions`) is a hierarchical GP: for every function sample, the ARD
# lengthscales and the variance are drawn from LogNormal hyperpriors, then f ~ GP(0, k).


def lognormal(loc, scale=1.0):
  """A LogNormal hyperprior: `draw(rng_key) -> exp(loc + scale * N(0, 1))`, shaped like loc.

  `scale` is the standard deviation of log(value). (optbnn's `LogNormal(mu, var)` takes the
  variance; its UCI settings use var = 1, which is the same as scale = 1.)
  """
  loc = np.asarray(loc, np.float32)
  scale = np.asarray(scale, np.float32)

  def draw(rng_key):
    return jnp.exp(loc + scale * jax.random.normal(rng_key, loc.shape, jnp.float32))
  return draw


def fixed(value):
  """A degenerate hyperprior that always returns `value` (to mix fixed and drawn values)."""
  value = np.asarray(value, np.float32)
  return lambda rng_key: jnp.asarray(value)


def sample_prior_with_hyperpriors(rng_key, kernel_fn: Callable[..., Kernel],
                            hyperpriors: dict[str, Callable], x, num_samples: int, *,
                            transform: Callable | None = None, jitter: float = 1e-6):
  """Draws functions from a GP whose hyperparameters are redrawn for every function.

    theta_s ~ hyperpriors,  f_s ~ GP(0, kernel_fn(**theta_s)),  s = 1..num_samples.

  Args:
    rng_key: a PRNG key.
    kernel_fn: builds a kernel from keyword hyperparameters, e.g. `gp.rbf`.
    hyperpriors: name -> `draw(rng_key) -> value` (e.g. `gp.lognormal(...)`, `gp.fixed(...)`).
    x: [n, d] (or [n]) measurement points.
    num_samples: number of functions.
    transform: applied to every drawn value before building the kernel. optbnn copies the
      LogNormal draw into the *unconstrained* parameter of a softplus-positive kernel
      parameter, so its effective hyperparameter is softplus(draw); pass
      `transform=jax.nn.softplus` to reproduce that target exactly.
    jitter: diagonal jitter for the Cholesky factors (raised automatically when needed).

  Returns:
    [num_samples, n] function values (one batched Cholesky, vmapped over samples).
  """
  x = _as_2d(jnp.asarray(x))
  names = sorted(hyperpriors)

  def gram(key):
    keys = jax.random.split(key, len(names))
    theta = {n: hyperpriors[n](k) for n, k in zip(names, keys)}
    if transform is not None:
      theta = {n: transform(v) for n, v in theta.items()}
    return _cast_kernel(kernel_fn(**theta), x.dtype)(x, x)

  k_theta, k_eps = jax.random.split(rng_key)
  grams = jax.vmap(gram)(jax.random.split(k_theta, num_samples))   # [num_samples, n, n]
  chol = _cholesky(grams, jitter)                                    # one batched call
  eps = jax.random.normal(k_eps, (num_samples, x.shape[0]), x.dtype)
  return jnp.einsum("snm,sm->sn", chol, eps)


def posterior(kernel: Kernel, x_train, y_train, x_test, noise_variance, *,
              dtype=None, full_cov: bool = True):
  """Exact GP regression posterior of the latent f at x_test (without the noise).

  R&W eq. 2.25-2.26 via algorithm 2.1:
    mean = K*^T (K + s^2 I)^{-1} y,   cov = K** - K*^T (K + s^2 I)^{-1} K*.

  Args:
    kernel: a `Kernel`.
    x_train: [n, d] (or [n]); y_train: [n].
    x_test: [m, d] (or [m]).
    noise_variance: observation noise s^2 (scalar).
    dtype: compute dtype; `jnp.float64` computes in double precision (enables x64 locally).
    full_cov: return the [m, m] covariance, else its diagonal [m].

  Returns:
    (mean [m], cov [m, m] or var [m]).
  """
  if dtype is not None and jnp.dtype(dtype) == jnp.float64:
    with jax.enable_x64(True):
      mean, cov = _posterior(kernel, x_train, y_train, x_test, noise_variance, jnp.float64,
                             full_cov)
      return np.asarray(mean), np.asarray(cov)
  return _posterior(kernel, x_train, y_train, x_test, noise_variance,
                    dtype or jnp.float32, full_cov)


def _cast_kernel(kernel, dtype):
  return jax.tree.map(lambda p: jnp.asarray(p, dtype), kernel)


def _posterior(kernel, x_train, y_train, x_test, noise_variance, dtype, full_cov):
  kernel = _cast_kernel(kernel, dtype)
  x, xs = _as_2d(jnp.asarray(x_train, dtype)), _as_2d(jnp.asarray(x_test, dtype))
  y = jnp.asarray(y_train, dtype)
  kxx = kernel(x, x) + jnp.asarray(noise_variance, dtype) * jnp.eye(x.shape[0], dtype=dtype)
  chol = jnp.linalg.cholesky(kxx)
  ksx = kernel(x, xs)
  alpha = jax.scipy.linalg.cho_solve((chol, True), y)
  mean = ksx.T @ alpha
  v = jax.scipy.linalg.solve_triangular(chol, ksx, lower=True)
  if full_cov:
    return mean, kernel(xs, xs) - v.T @ v
  return mean, kernel.diag(xs) - jnp.sum(v * v, 0)


def log_marginal_likelihood(kernel: Kernel, x_train, y_train, noise_variance):
  """log p(y | X) = -y^T K^-1 y / 2 - log|K| / 2 - n log(2 pi) / 2 (R&W eq. 2.30)."""
  x = _as_2d(jnp.asarray(x_train))
  y = jnp.asarray(y_train)
  kxx = kernel(x, x) + noise_variance * jnp.eye(x.shape[0], dtype=x.dtype)
  chol = jnp.linalg.cholesky(kxx)
  alpha = jax.scipy.linalg.cho_solve((chol, True), y)
  return (-0.5 * y @ alpha - jnp.sum(jnp.log(jnp.diagonal(chol)))
          - 0.5 * x.shape[0] * jnp.log(2 * jnp.pi))


def predictive_log_density(kernel: Kernel, x_train, y_train, x_test, y_test, noise_variance,
                           *, dtype=None):
  """log p(y*_i | x*_i, data) per test point under the exact GP (noisy observations): [m]."""
  mean, var = posterior(kernel, x_train, y_train, x_test, noise_variance, dtype=dtype,
                        full_cov=False)
  xp = np if isinstance(mean, np.ndarray) else jnp  # float64 results come back as numpy.
  var = var + noise_variance
  y_test = xp.asarray(y_test, mean.dtype)
  return -0.5 * (xp.log(2 * np.pi * var) + (y_test - mean) ** 2 / var)
