"""Shared, cached helpers for the model-zoo tests (tracing big models is the slow part)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdl.models as models

# Tiny inputs compile faster with LLVM's optimizations off; the values are the same ops.
FAST = {"xla_backend_optimization_level": 0}


@functools.lru_cache(maxsize=None)
def _abstract(name: str, resolution: int, overrides: tuple):
  model = models.create(name, **dict(overrides))
  x = jnp.zeros((1, resolution, resolution, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x))


@pytest.fixture(scope="session")
def abstract_variables():
  """abstract_variables(name, resolution=64, **overrides) -> eval_shape of model.init."""
  def get(name, resolution=64, **overrides):
    return _abstract(name, resolution, tuple(sorted(overrides.items())))
  return get


def num_params(tree) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


@pytest.fixture(scope="session")
def count_params():
  return num_params


@pytest.fixture(scope="session")
def fast_jit():
  """jax.jit with LLVM optimizations off: several times faster to compile on CPU."""
  return functools.partial(jax.jit, compiler_options=FAST)


def _draw(path, shape_dtype, rng):
  leaf, shape = path[-1].key, shape_dtype.shape
  if leaf == "kernel":
    return rng.standard_normal(shape) * np.sqrt(1.0 / np.prod(shape[:-1]))
  if leaf in ("scale", "var", "gamma"):
    return rng.uniform(0.5, 1.5, shape)
  return 0.1 * rng.standard_normal(shape)


@pytest.fixture(scope="session")
def random_variables():
  """random_variables(model, x, seed=0) -> {"params", ["batch_stats"]} drawn in numpy.

  Same structure as `model.init` (from `jax.eval_shape`, no compilation), random values
  (kernels N(0, 1/fan_in), scales and variances U(0.5, 1.5), the rest N(0, 0.01)).
  Compiling `model.init` costs several times a forward pass on CPU.
  """
  def make(model, x, seed=0):
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return {c: jax.tree_util.tree_map_with_path(
        lambda p, s: jnp.asarray(_draw(p, s, rng), s.dtype), shapes[c])
        for c in ("params", "batch_stats") if c in shapes}
  return make
