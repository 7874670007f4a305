"""Rematerialization that survives every XLA backend.

`jax.checkpoint` marks the recomputation in the backward pass with optimization barriers
so that XLA's common-subexpression elimination does not merge it with the forward pass.
XLA:CPU expands those barriers early in its pipeline, so on CPU the recomputation is merged
again and `jax.checkpoint` saves no memory at all (measured in tools/bench_memory.py: the
same peak with and without it). `recompute_in_backward(f)` is a `jax.custom_vjp` whose
backward pass re-runs `f` on its saved inputs after adding `0 * c`, `c` one element of the
incoming cotangent. XLA does not fold `x * 0` for floats (NaN/Inf semantics), so the
recomputation depends on the cotangent, cannot be merged with the forward pass, and is
scheduled after it on every backend: only `f`'s inputs are kept between the passes.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def opaque_zero(tree) -> jax.Array:
  """A float32 zero computed from the first element of `tree`'s first array (a floating one
  if there is one; float0 leaves skipped): XLA cannot fold `x * 0` (NaN for an infinite x),
  so whatever uses it is computed only once that array exists. A constant zero when the
  tree holds no such array."""
  leaves = [c for c in jax.tree_util.tree_leaves(tree)
            if c.size and c.dtype != jax.dtypes.float0]
  floats = [c for c in leaves if jnp.issubdtype(c.dtype, jnp.inexact)]
  if not (floats or leaves):
    return jnp.zeros((), jnp.float32)
  return (floats or leaves)[0].ravel()[0].astype(jnp.float32) * 0.0


def recompute_in_backward(f: Callable, perturb: tuple[int, ...] | None = None) -> Callable:
  """Same values and gradients as `f`; keeps only `f`'s inputs for the backward pass.

  Args:
    f: a pure function whose positional arguments are arrays or pytrees of arrays (close
      over static settings instead of passing them).
    perturb: the positions of the arguments that get the cotangent's `0 * c` (None: all).
      Adding it to a large activation materializes a copy of it; when every recomputed
      value that matters also depends on a small argument (a BatchNorm scale), perturbing
      only that one is enough.
  """
  @jax.custom_vjp
  def g(*args):
    return f(*args)

  def fwd(*args):
    return f(*args), args

  def bwd(args, cotangent):
    zero = opaque_zero(cotangent)
    args = tuple(a if perturb is not None and i not in perturb else
                 jax.tree_util.tree_map(lambda x: x + zero.astype(x.dtype), a)
                 for i, a in enumerate(args))
    _, vjp = jax.vjp(f, *args)
    return vjp(cotangent)

  g.defvjp(fwd, bwd)
  return g


@jax.custom_vjp
def accumulate_here(x):
  """Identity (on an array or a pytree of arrays) whose cotangent is materialized here.

  A value read by many later computations (a dense block's feature map) gets its cotangent
  as the sum of one contribution per reader. XLA fuses that sum into one late fusion that
  reads every contribution, so each reader's input-gradient buffer stays live until the
  last one arrives (quadratic memory in a dense block). Reading the values through a chain
  `x1 = accumulate_here(x0)`, `x2 = accumulate_here(x1)`, ..., one link per reader, makes
  the backward pass add each contribution to a running sum that is materialized at the
  link, so the contribution's buffer can be freed at once. Pass all values a reader takes
  as one pytree: their sums are then all done before the reader's own backward pass starts.

  The fusion stop differs by platform (`lax.platform_dependent`): an optimization barrier
  on GPUs/TPUs; on CPU, where XLA removes barriers before fusion, a `lax.cond` on an
  always-true predicate XLA cannot evaluate, whose true branch returns its operands (XLA
  keeps a conditional with an empty branch, and its operands are materialized buffers).
  """
  return x


def _accumulate_fwd(x):
  return x, None


def _barrier_link(g):
  return jax.lax.optimization_barrier(g)


def _cond_link(g):
  leaves, tree = jax.tree_util.tree_flatten(g)
  pos = [i for i, x in enumerate(leaves) if jnp.issubdtype(x.dtype, jnp.inexact) and x.size]
  if not pos:
    return g
  floats = [leaves[i] for i in pos]
  bits = jax.lax.bitcast_convert_type(floats[0].ravel()[0].astype(jnp.float32), jnp.int32)
  always = (bits | 1) != 0
  # The false branch never runs; it differs from the true one (`x * 1`, elementwise) so
  # that the two are not one computation.
  floats = jax.lax.cond(always, lambda ls: ls, lambda ls: [x * 1 for x in ls], floats)
  for i, x in zip(pos, floats):
    leaves[i] = x
  return jax.tree_util.tree_unflatten(tree, leaves)


def _accumulate_bwd(_, g):
  return (jax.lax.platform_dependent(g, cpu=_cond_link, default=_barrier_link),)


accumulate_here.defvjp(_accumulate_fwd, _accumulate_bwd)
