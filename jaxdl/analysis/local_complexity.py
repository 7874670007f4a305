"""Local complexity: how many neuron hyperplanes cut a small frame around each input.

Humayun, Balestriero & Baraniuk, "Deep Networks Always Grok and Here is Why" (ICML 2024),
Sec. 3 (local complexity as a progress measure; code: AhmedImtiazPrio/grok-adversarial,
`local_complexity.py`, `samplers.py`). Around a point x take the cross-polytope frame of the
2P vertices x +- r v_p spanned by P orthonormal directions v_p (optionally plus x itself). The
hyperplane of a neuron (its pre-activation = 0) passes through the frame when the sign of its
pre-activation is not the same at all vertices; the local complexity (LC) of a layer is the
number of such neurons, and the total LC sums the layers. Conv units count once per
(position, channel). A neuron whose pre-activation is exactly 0 at some vertex and not at
another counts too (torch.sign semantics of the reference).

Pre-activations are read from the `preactivations` collection (DESIGN.md): every
piecewise-linear jaxdl model sows the input of each ReLU there, so MLPs, CNNs and ResNets need
no per-architecture code. The logits count as a layer only if the model sows them
(`mlp(sow_logits=True)`, as the reference's hooks on every Linear do).

Doing less work. With the directions shared by all points (the reference's frame), the first
Dense/Conv layer is affine, so its outputs at the vertices are W x + b +- r W v: computed once
per point and once per direction instead of once per vertex. The model is run on the real
vertices and only the first layer's output is replaced, so a model that reads its input again
later stays exact; the shortcut is used only when the first Dense/Conv provably sees a plain
reshape of the input (checked on the traced program), else every vertex goes through the model.

  lc = local_complexity(model.apply, variables, x, radius=0.1, num_directions=25)
  lc["total"]            # [N] int32, neurons whose hyperplane cuts the frame of each point
  lc["per_layer"]["act_0"]  # [N] per sown pre-activation
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.extend  # jax.extend.core.Var, to walk the traced program
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdl import errors

# Primitives that only relabel the elements of the input: a first layer fed through them sees
# the input itself, so it can be applied once per point and once per direction.
_RELAYOUT = frozenset({"reshape", "convert_element_type", "squeeze", "expand_dims", "copy",
                       "copy_p"})
_AFFINE_MODULES = (nn.Dense, nn.Conv)
# Pre-activation elements per chunk of points: 2^21 floats = 8 MiB keeps a chunk's
# activations in cache on CPUs; the per-chunk loop overhead is small next to the matmuls.
_CHUNK_ELEMENTS = 1 << 21


def random_directions(rng_key: jax.Array, num_directions: int, shape, dtype=jnp.float32):
  """P random orthonormal directions (Haar-distributed frame) in the input space.

  Args:
    rng_key: PRNG key.
    num_directions: P, at most prod(shape).
    shape: shape of one input, e.g. (28, 28, 1).
  Returns:
    [P, *shape] array with orthonormal rows (when flattened).
  """
  shape = tuple(int(s) for s in shape)
  d = math.prod(shape)
  if not 1 <= num_directions <= d:
    raise errors.ShapeError(
        f"num_directions={num_directions} must be between 1 and the input dimension {d}; "
        f"pass fewer directions.")
  g = jax.random.normal(rng_key, (d, num_directions), jnp.float32)
  q, r = jnp.linalg.qr(g)
  # Sign fix makes the frame Haar-distributed rather than QR-convention dependent.
  q = q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0)
  return q.T.reshape((num_directions,) + shape).astype(dtype)


def _strip(variables):
  # `init` returns the sown collection too; applying with it would append to old values.
  if hasattr(variables, "items"):
    return {k: v for k, v in variables.items() if k != "preactivations"}
  return variables


def _named_preactivations(collection) -> list[tuple[str, jax.Array]]:
  flat = traverse_util.flatten_dict(dict(collection), sep="/")
  out = []
  for name, leaf in flat.items():
    leaves = leaf if isinstance(leaf, tuple) else (leaf,)
    for i, a in enumerate(leaves):
      out.append((name if len(leaves) == 1 else f"{name}_{i}", a))
  return out


class _NoAffineLayer(Exception):
  pass


def _first_layer_sees_input(apply_fn, variables, example) -> bool:
  """True when the first Dense/Conv called by `apply_fn` gets a reshape of the input.

  Traces the model once and walks back from that layer's input: every operation on the way
  must be a pure relayout of the model input (reshape, dtype conversion), with the batch
  dimension kept, so that W x + b +- r W v equals the layer applied to the vertices.
  """
  captured = []

  def interceptor(next_fun, args, kwargs, context):
    if (not captured and context.method_name == "__call__"
        and type(context.module) in _AFFINE_MODULES and args):
      captured.append(args[0])
    return next_fun(*args, **kwargs)

  def first_input(xs):
    with nn.intercept_methods(interceptor):
      apply_fn(variables, xs, mutable=["preactivations"])
    if not captured:
      raise _NoAffineLayer()
    return captured[0]

  try:
    closed = jax.make_jaxpr(first_input)(example)
  except Exception:  # No affine layer, or one inside a nested transform: use every vertex.
    return False
  jaxpr = closed.jaxpr
  out = jaxpr.outvars[0]
  if not hasattr(out, "aval") or len(out.aval.shape) < 1:
    return False
  if out.aval.shape[0] != example.shape[0]:
    return False
  if math.prod(out.aval.shape[1:]) != math.prod(example.shape[1:]):
    return False
  # Walk back from the captured input to the program inputs.
  needed = {out}
  for eqn in reversed(jaxpr.eqns):
    if not any(v in needed for v in eqn.outvars):
      continue
    if eqn.primitive.name not in _RELAYOUT:
      return False
    needed.difference_update(eqn.outvars)
    needed.update(v for v in eqn.invars if isinstance(v, jax.extend.core.Var))
  return needed == {jaxpr.invars[0]}


_FAST_CACHE: dict[Any, bool] = {}


def _first_layer_fast(apply_fn, variables, x) -> bool:
  example = jnp.zeros((2,) + tuple(x.shape[1:]), x.dtype)
  try:
    key = (apply_fn, tuple(x.shape[1:]), str(x.dtype), jax.tree_util.tree_structure(variables))
    hash(key)
  except TypeError:
    return _first_layer_sees_input(apply_fn, variables, example)
  if key not in _FAST_CACHE:
    if len(_FAST_CACHE) > 256:
      _FAST_CACHE.clear()
    _FAST_CACHE[key] = _first_layer_sees_input(apply_fn, variables, example)
  return _FAST_CACHE[key]


def _frame_counts(apply_fn, variables, xc, dirs, radius, include_center, fast):
  """LC of one chunk of points. xc: [c, *S]; dirs: [P, *S] (shared) or [c, P, *S]."""
  c, shape = xc.shape[0], xc.shape[1:]
  shared = dirs.ndim == xc.ndim
  num_dirs = dirs.shape[0] if shared else dirs.shape[1]
  offsets = (radius * dirs).astype(xc.dtype)
  offsets = offsets[None] if shared else offsets
  parts = [xc[:, None] + offsets, xc[:, None] - offsets]
  if include_center:
    parts.append(xc[:, None])
  vertices = jnp.concatenate(parts, axis=1)
  num_vertices = vertices.shape[1]
  flat = vertices.reshape((c * num_vertices,) + shape)

  def first_layer(next_fun, args, kwargs, context):
    if (context.method_name != "__call__" or type(context.module) not in _AFFINE_MODULES
        or done):
      return next_fun(*args, **kwargs)
    done.append(True)
    features = args[0].shape[1:]
    dtype = args[0].dtype
    # One call (a Flax layer's parameters can be read once per call): the points, a zero
    # input (the bias, and the zero padding of convolutions, which is linear) and the
    # directions, whose outputs minus the bias give W v.
    rows = jnp.concatenate([xc.reshape((c,) + features).astype(dtype),
                            jnp.zeros((1,) + features, dtype),
                            dirs.reshape((-1,) + features).astype(dtype)], axis=0)
    y = next_fun(rows, *args[1:], **kwargs)
    y0, yb, yd = y[:c], y[c:c + 1], y[c + 1:] - y[c:c + 1]
    out_shape = y0.shape[1:]
    yd = (radius * yd).astype(y0.dtype).reshape((1 if shared else c, num_dirs) + out_shape)
    outs = [y0[:, None] + yd, y0[:, None] - yd]
    if include_center:
      outs.append(y0[:, None])
    return jnp.concatenate(outs, axis=1).reshape((c * num_vertices,) + out_shape)

  done = []
  if fast:
    with nn.intercept_methods(first_layer):
      _, state = apply_fn(variables, flat, mutable=["preactivations"])
  else:
    _, state = apply_fn(variables, flat, mutable=["preactivations"])
  counts = {}
  for name, a in _named_preactivations(state.get("preactivations", {})):
    if a.shape[0] != c * num_vertices:
      raise errors.ShapeError(
          f"pre-activation {name!r} has leading dimension {a.shape[0]}, expected the batch "
          f"{c * num_vertices}; sow per-example pre-activations (batch first).")
    a = a.reshape(c, num_vertices, -1)
    # sign(max) != sign(min) <=> the signs are not all equal (sign is monotone).
    cut = jnp.sign(jnp.max(a, axis=1)) != jnp.sign(jnp.min(a, axis=1))
    counts[name] = jnp.sum(cut, axis=-1, dtype=jnp.int32)
  return counts


@functools.partial(jax.jit, static_argnames=("apply_fn", "include_center", "chunk_size",
                                             "fast"))
def _local_complexity(apply_fn, variables, x, directions, radius, *, include_center,
                      chunk_size, fast):
  n = x.shape[0]
  num_chunks = -(-n // chunk_size)
  pad = num_chunks * chunk_size - n
  shared = directions.ndim == x.ndim
  xp = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(
      (num_chunks, chunk_size) + x.shape[1:])
  if shared:
    fn = lambda xc: _frame_counts(apply_fn, variables, xc, directions, radius,
                                  include_center, fast)
    counts = jax.lax.map(fn, xp)
  else:
    dp = jnp.pad(directions, [(0, pad)] + [(0, 0)] * (directions.ndim - 1)).reshape(
        (num_chunks, chunk_size) + directions.shape[1:])
    fn = lambda xd: _frame_counts(apply_fn, variables, xd[0], xd[1], radius,
                                  include_center, fast)
    counts = jax.lax.map(fn, (xp, dp))
  per_layer = {k: v.reshape(-1)[:n] for k, v in counts.items()}
  total = sum(per_layer.values()) if per_layer else jnp.zeros((n,), jnp.int32)
  return {"total": total, "per_layer": per_layer}


def _default_chunk(apply_fn, variables, x, num_vertices) -> int:
  shapes = jax.eval_shape(lambda v, xs: apply_fn(v, xs, mutable=["preactivations"])[1],
                          variables, jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype))
  units = sum(math.prod(s.shape) for s in jax.tree_util.tree_leaves(shapes)) or 1
  return int(max(1, min(x.shape[0], _CHUNK_ELEMENTS // (units * num_vertices))))


def local_complexity(apply_fn: Callable, variables, x: jax.Array, *, radius: float,
                     num_directions: int | None = None, directions: jax.Array | None = None,
                     include_center: bool = False, rng_key: jax.Array | None = None,
                     chunk_size: int | None = None, method: str = "auto") -> dict:
  """Local complexity of a piecewise-linear Flax model at a batch of points.

  Args:
    apply_fn: a Flax `apply`, called as `apply_fn(variables, x, mutable=["preactivations"])`.
      Pass the same function object across calls (e.g. `model.apply`) to reuse compilations.
    variables: the model's variables (a sown `preactivations` collection is ignored).
    x: [N, *S] points (already preprocessed as the model expects them).
    radius: r, the distance of every vertex from its point.
    num_directions: P, the number of random orthonormal directions (2P vertices); the frame is
      drawn once from `rng_key` and shared by all points, as in the reference.
    directions: [P, *S] (shared) or [N, P, *S] (per point) directions with orthonormal rows,
      used as given (not renormalized); replaces the random frame.
    include_center: also use x itself as a vertex.
    rng_key: key for the random frame (default: jax.random.key(0)).
    chunk_size: points per chunk (default: ~8 MiB of pre-activations per chunk).
    method: "auto" (first layer computed once per point and per direction when provably
      exact, else every vertex through the model) or "vertices" (every vertex, always).
  Returns:
    {"total": [N] int32, "per_layer": {name: [N] int32}}, names from the `preactivations`
    collection ("act_0", "logits", "layer1_0/relu1", ...).
  """
  if not radius > 0:
    raise errors.ConfigError(f"radius must be positive, got {radius}; pass e.g. radius=0.1.")
  if method not in ("auto", "vertices"):
    raise errors.unknown_name("local complexity method", method, ("auto", "vertices"))
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  if x.ndim < 2:
    raise errors.ShapeError(f"x must be a batch [N, ...], got shape {x.shape}; add a batch "
                            f"dimension (x[None]).")
  shape = x.shape[1:]
  if directions is None:
    if num_directions is None:
      raise errors.ConfigError("local_complexity needs num_directions or directions; pass "
                               "e.g. num_directions=25 (50 vertices).")
    key = rng_key if rng_key is not None else jax.random.key(0)
    directions = random_directions(key, num_directions, shape, x.dtype)
  else:
    directions = jnp.asarray(directions, x.dtype)
    if directions.shape[-len(shape):] != shape or directions.ndim not in (x.ndim, x.ndim + 1):
      raise errors.ShapeError(
          f"directions must have shape [P, {', '.join(map(str, shape))}] or [N, P, ...], got "
          f"{directions.shape}; give one row per direction, shaped like one input.")
    if directions.ndim == x.ndim + 1 and directions.shape[0] != x.shape[0]:
      raise errors.ShapeError(
          f"per-point directions have {directions.shape[0]} rows for {x.shape[0]} points; "
          f"pass [N, P, ...] with N = len(x), or shared [P, ...] directions.")
    if num_directions is not None and directions.shape[-x.ndim] != num_directions:
      raise errors.ConfigError(
          f"num_directions={num_directions} disagrees with directions of shape "
          f"{directions.shape}; pass only one of them.")
  variables = _strip(variables)
  num_dirs = directions.shape[-x.ndim]
  num_vertices = 2 * num_dirs + int(include_center)
  if chunk_size is None:
    chunk_size = _default_chunk(apply_fn, variables, x, num_vertices)
  chunk_size = int(max(1, min(chunk_size, x.shape[0])))
  fast = method == "auto" and _first_layer_fast(apply_fn, variables, x)
  return _local_complexity(apply_fn, variables, x, directions, jnp.asarray(radius, x.dtype),
                           include_center=bool(include_center), chunk_size=chunk_size,
                           fast=bool(fast))


def uses_shared_first_layer(apply_fn: Callable, variables, x: jax.Array) -> bool:
  """Whether `local_complexity(method="auto")` computes the first layer once per point and
  once per direction for this model and input shape (else every vertex runs the full model)."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  return _first_layer_fast(apply_fn, _strip(variables), x)


def decision_boundary_points(apply_fn: Callable, variables, x_a: jax.Array, x_b: jax.Array,
                             *, num_steps: int = 20):
  """Points near the decision boundary, by bisection on the segments from x_a to x_b.

  For each pair whose predicted classes differ, bisects t in [0, 1] on (1-t) x_a + t x_b until
  the prediction changes within 2^-num_steps of the segment; the paper measures LC there to
  show linear regions migrating towards the boundary.

  Args:
    apply_fn: `apply_fn(variables, x) -> logits [N, K]`.
    x_a, x_b: [N, *S] segment ends.
  Returns:
    (points [N, *S], valid [N] bool): valid is False where both ends get the same class (the
    point is then x_a).
  """
  return _boundary(apply_fn, _strip(variables), jnp.asarray(x_a), jnp.asarray(x_b),
                   num_steps=int(num_steps))


@functools.partial(jax.jit, static_argnames=("apply_fn", "num_steps"))
def _boundary(apply_fn, variables, x_a, x_b, *, num_steps):
  expand = lambda t: t.reshape((-1,) + (1,) * (x_a.ndim - 1))
  predict = lambda xs: jnp.argmax(apply_fn(variables, xs), axis=-1)
  label_a = predict(x_a)
  valid = label_a != predict(x_b)
  n = x_a.shape[0]

  def body(_, lohi):
    lo, hi = lohi
    mid = 0.5 * (lo + hi)
    same = predict(x_a + expand(mid) * (x_b - x_a)) == label_a
    return jnp.where(same, mid, lo), jnp.where(same, hi, mid)

  lo, hi = jax.lax.fori_loop(0, num_steps, body, (jnp.zeros((n,), x_a.dtype),
                                                  jnp.ones((n,), x_a.dtype)))
  t = jnp.where(valid, 0.5 * (lo + hi), 0.0)
  return x_a + expand(t) * (x_b - x_a), valid


def summarize(lc: dict) -> dict[str, float]:
  """Mean LC over points, total and per layer, as plain floats (for metrics.jsonl)."""
  out = {"total": float(np.mean(np.asarray(lc["total"])))}
  for k, v in lc["per_layer"].items():
    out[k] = float(np.mean(np.asarray(v)))
  return out
