"""A Flax CNN as a flat graph of JAX primitives: its layers, blocks and spatial tensors.

Everything in `jaxdl.efficiency` is derived from the model itself rather than from
hand-written layer tables: `trace(model, variables, input_shape)` runs
`model.apply(variables, x, train=False)` under `jax.make_jaxpr`, inlines nested calls
(`jit`, `custom_jvp_call`, `checkpoint`, ...) into one list of primitive applications and
records for each the Flax module path it came from (the jaxpr name stack, e.g.
`blocks_1_0/conv_dw`). From that graph:

* layers are the convolutions, pools, pads/slices, merges (residual adds, concatenations),
  dense layers and global reductions applied to activations;
* blocks are the top-level submodules whose names match `BLOCK_PATTERN` (`blocks_{i}_{j}` as
  timm's MobileNet/EfficientNet, `layer{s}_{b}` as timm's ResNet), in forward order; they
  define `split` for patch-based inference (`blocks[:split]` run patch by patch);
* spatial tensors are the rank-4 NHWC activations (values that depend on the input image);
  everything else (parameters, BatchNorm statistics and what is computed from them alone) is
  position-independent.

Convention: activations are NHWC (jaxdl's contract), so the spatial axes are 1 and 2.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from jaxdl import errors
from jaxdl.layers.conv import conv_impl

SPATIAL_AXES = (1, 2)
# Top-level block modules: timm MobileNet/EfficientNet `blocks_{stage}_{i}`, timm ResNet
# `layer{stage}_{i}`, and generic `stage{s}_{i}` / `stages_{s}_{i}` names.
BLOCK_PATTERN = r"^(blocks_\d+_\d+|layer\d+_\d+|stages?_?\d+_\d+)$"
# Primitives whose body is inlined: for the forward pass they are plain function calls.
_INLINE = {"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
           "custom_vjp_call_jaxpr", "checkpoint", "remat", "remat2", "named_call"}
_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
# Position-wise primitives: each output position depends on the same position of the inputs.
ELEMENTWISE = {
    "add", "add_any", "sub", "mul", "div", "rem", "max", "min", "neg", "abs", "sign", "floor",
    "ceil", "round", "clamp", "select_n", "convert_element_type", "integer_pow", "pow", "sqrt",
    "rsqrt", "cbrt", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "erf", "erfc",
    "erf_inv", "sin", "cos", "tan", "atan2", "square", "reciprocal", "copy", "copy_p", "ge",
    "gt", "le", "lt", "eq", "ne", "and", "or", "not", "xor", "is_finite", "nextafter",
    "stop_gradient", "optimization_barrier", "reduce_precision", "real", "imag",
}
POOLS = {"reduce_window_max": -np.inf, "reduce_window_min": np.inf, "reduce_window_sum": 0.0}
_ids = itertools.count()


@dataclasses.dataclass(eq=False)
class Var:
  """A value of the flat graph (identity = object identity)."""
  shape: tuple[int, ...]
  dtype: Any
  id: int = dataclasses.field(default_factory=lambda: next(_ids))

  @property
  def size(self) -> int:
    return int(math.prod(self.shape))

  def __repr__(self):
    return f"Var{self.id}{list(self.shape)}"


@dataclasses.dataclass(frozen=True)
class Lit:
  """A literal operand (a Python or numpy scalar)."""
  value: Any


@dataclasses.dataclass(eq=False)
class Node:
  """One primitive application: `outs = prim.bind(*ins, **params)`."""
  index: int
  prim: Any
  ins: tuple
  outs: tuple
  params: dict
  path: tuple[str, ...]

  @property
  def name(self) -> str:
    return self.prim.name

  @property
  def module(self) -> str:
    """The Flax module path without the root, e.g. 'blocks_1_0/conv_dw'."""
    return "/".join(self.path[1:])


@dataclasses.dataclass(eq=False)
class Graph:
  """A traced model: flat nodes, the image input, parameter leaves and outputs."""
  nodes: list[Node]
  input: Var
  params: list[Var]
  consts: dict  # Var -> value of closed-over constants
  outs: list
  out_tree: Any
  model_name: str
  activations: set = dataclasses.field(default_factory=set)  # Vars that depend on the input
  consumers: dict = dataclasses.field(default_factory=dict)  # Var -> [Node]
  producer: dict = dataclasses.field(default_factory=dict)   # Var -> Node

  def is_spatial(self, v) -> bool:
    """A rank-4 activation [N, H, W, C]."""
    return isinstance(v, Var) and v in self.activations and len(v.shape) == 4

  def block_names(self, pattern: str = BLOCK_PATTERN) -> list[str]:
    """The model's blocks in forward order (module names matching `pattern`)."""
    seen = []
    for n in self.nodes:
      b = block_of(n, pattern)
      if b is not None and b not in seen:
        seen.append(b)
    return seen


def block_of(node: Node, pattern: str = BLOCK_PATTERN) -> str | None:
  for p in node.path:
    if re.match(pattern, p):
      return p
  return None


def _name_stack(eqn) -> tuple[str, ...]:
  s = str(eqn.source_info.name_stack)
  return tuple(p for p in s.split("/") if p) if s else ()


def _flatten(jaxpr, consts, args, scope, nodes, const_values):
  env = {}

  def read(a):
    if isinstance(a, jcore.Literal):
      return Lit(a.val)
    return env[a]

  for v, c in zip(jaxpr.constvars, consts):
    cv = Var(tuple(np.shape(c)), jnp.result_type(c))
    const_values[cv] = c
    env[v] = cv
  for v, a in zip(jaxpr.invars, args):
    env[v] = a
  for eqn in jaxpr.eqns:
    ins = tuple(read(a) for a in eqn.invars)
    path = scope + _name_stack(eqn)
    sub = None
    if eqn.primitive.name in _INLINE:
      for key in _CALL_PARAMS:
        if key in eqn.params:
          sub = eqn.params[key]
          break
    if sub is not None:
      if isinstance(sub, jcore.ClosedJaxpr):
        outs = _flatten(sub.jaxpr, sub.consts, ins, path, nodes, const_values)
      else:
        outs = _flatten(sub, (), ins, path, nodes, const_values)
    else:
      outs = tuple(Var(tuple(v.aval.shape), v.aval.dtype) for v in eqn.outvars)
      nodes.append(Node(len(nodes), eqn.primitive, ins, outs, dict(eqn.params), path))
    for v, o in zip(eqn.outvars, outs):
      if not isinstance(v, jcore.DropVar):
        env[v] = o
  return tuple(read(a) for a in jaxpr.outvars)


def trace(model, variables, input_shape: Sequence[int], dtype=jnp.float32) -> Graph:
  """Traces `model.apply(variables, x, train=False)` for x of `input_shape` (NHWC).

  Only shapes are used: `variables` may be arrays or `jax.ShapeDtypeStruct`s.
  """
  input_shape = tuple(int(s) for s in input_shape)
  if len(input_shape) != 4:
    raise errors.ShapeError(f"input_shape must be NHWC [N, H, W, C], got {input_shape}.")
  leaves, treedef = jax.tree.flatten(variables)
  structs = [jax.ShapeDtypeStruct(np.shape(l), jnp.result_type(l)) for l in leaves]

  def fn(leaves, x):
    return model.apply(jax.tree.unflatten(treedef, leaves), x, train=False)

  # The graph is read in terms of convolutions: trace without the CPU matmul formulations.
  with conv_impl("xla"):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(
        structs, jax.ShapeDtypeStruct(input_shape, dtype))
  jaxpr = closed.jaxpr
  param_vars = [Var(s.shape, s.dtype) for s in structs]
  x = Var(input_shape, jnp.dtype(dtype))
  nodes, const_values = [], {}
  outs = _flatten(jaxpr, closed.consts, tuple(param_vars) + (x,), (), nodes, const_values)
  g = Graph(nodes=nodes, input=x, params=param_vars, consts=const_values, outs=list(outs),
            out_tree=jax.tree.structure(out_shape), model_name=type(model).__name__)
  g.activations.add(x)
  for n in nodes:
    for a in n.ins:
      if isinstance(a, Var):
        g.consumers.setdefault(a, []).append(n)
    for o in n.outs:
      g.producer[o] = n
    if any(isinstance(a, Var) and a in g.activations for a in n.ins):
      g.activations.update(n.outs)
  return g


def spatial_inputs(g: Graph, node: Node) -> list[int]:
  """Positions of the node's operands that are spatial activations."""
  return [i for i, a in enumerate(node.ins) if g.is_spatial(a)]


def layer_kind(g: Graph, node: Node) -> str | None:
  """Classifies a node acting on activations as a layer, or None (fused elementwise op).

  Kinds: conv, depthwise, pool, pad, slice, merge (two or more activations combined
  elementwise: residual add), concat, dense, global (a reduction over spatial axes).
  """
  acts = [a for a in node.ins if isinstance(a, Var) and a in g.activations]
  if not acts:
    return None
  name = node.name
  if name == "conv_general_dilated":
    groups = node.params["feature_group_count"]
    cin = node.ins[0].shape[-1]
    return "depthwise" if groups > 1 and groups == cin else "conv"
  if name in POOLS or name == "reduce_window":
    return "pool"
  if name == "pad":
    return "pad"
  if name == "slice":
    return "slice"
  if name == "dot_general":
    return "dense"
  if name == "concatenate":
    return "concat" if len(acts) > 1 else None
  if name.startswith("reduce_") or name in ("argmax", "argmin"):
    axes = set(node.params.get("axes", ()))
    if g.is_spatial(acts[0]) and axes & set(SPATIAL_AXES):
      return "global"
    return None
  if name in ELEMENTWISE and len([a for a in acts if len(a.shape) >= 1]) > 1:
    # Two activations combined position-wise (x + f(x)); `x * 2` style reuses are rare.
    distinct = {a.id for a in acts}
    return "merge" if len(distinct) > 1 else None
  return None


def conv_geometry(node: Node) -> dict:
  """Kernel, stride, padding and dilation of a conv / pool / pad / slice along H and W."""
  p = node.params
  name = node.name
  if name == "conv_general_dilated":
    dn = p["dimension_numbers"]
    if tuple(dn.lhs_spec[2:]) != SPATIAL_AXES or tuple(dn.out_spec[2:]) != SPATIAL_AXES:
      raise errors.ShapeError(f"{node.module}: only NHWC convolutions are supported.")
    if any(d != 1 for d in p["lhs_dilation"]):
      raise errors.ConfigError(f"{node.module}: transposed (input-dilated) convolutions are "
                               f"not supported by patch-based inference.")
    rhs = node.ins[1].shape
    kernel = tuple(rhs[d] for d in dn.rhs_spec[2:])
    return dict(kernel=kernel, stride=tuple(p["window_strides"]),
                padding=tuple(tuple(x) for x in p["padding"]),
                dilation=tuple(p["rhs_dilation"]))
  if name in POOLS or name == "reduce_window":
    if any(d != 1 for d in p["base_dilation"]):
      raise errors.ConfigError(f"{node.module}: base-dilated pooling is not supported.")
    return dict(kernel=tuple(p["window_dimensions"][a] for a in SPATIAL_AXES),
                stride=tuple(p["window_strides"][a] for a in SPATIAL_AXES),
                padding=tuple(tuple(p["padding"][a]) for a in SPATIAL_AXES),
                dilation=tuple(p["window_dilation"][a] for a in SPATIAL_AXES))
  if name == "pad":
    cfg = p["padding_config"]
    if any(cfg[a][2] != 0 for a in SPATIAL_AXES):
      raise errors.ConfigError(f"{node.module}: interior padding is not supported.")
    return dict(kernel=(1, 1), stride=(1, 1),
                padding=tuple((cfg[a][0], cfg[a][1]) for a in SPATIAL_AXES), dilation=(1, 1))
  if name == "slice":
    strides = p["strides"] or (1,) * len(p["start_indices"])
    return dict(kernel=(1, 1), stride=tuple(strides[a] for a in SPATIAL_AXES),
                padding=tuple((-p["start_indices"][a], 0) for a in SPATIAL_AXES),
                dilation=(1, 1))
  return dict(kernel=(1, 1), stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1))


def macs_per_image(g: Graph, node: Node) -> int:
  """Multiply-accumulates of a conv or dense node for one image."""
  batch = g.input.shape[0]
  out = node.outs[0]
  if node.name == "conv_general_dilated":
    rhs = node.ins[1].shape  # kh * kw * (cin / groups) * cout
    positions = out.size // (batch * out.shape[-1])
    return int(positions * math.prod(rhs))
  if node.name == "dot_general":
    (lc, _), _ = node.params["dimension_numbers"]
    contracted = math.prod(node.ins[0].shape[d] for d in lc)
    return int(out.size // batch * contracted)
  return 0


def evaluate(nodes: Sequence[Node], env: dict) -> dict:
  """Runs `nodes` in order on concrete or traced values; `env` maps Var -> value (updated)."""
  for n in nodes:
    ins = [a.value if isinstance(a, Lit) else env[a] for a in n.ins]
    outs = n.prim.bind(*ins, **n.params)
    if not n.prim.multiple_results:
      outs = (outs,)
    for v, o in zip(n.outs, outs):
      env[v] = o
  return env


def bind_inputs(g: Graph, variables, x) -> dict:
  """The initial environment: parameter leaves, constants and the image."""
  leaves = jax.tree.leaves(variables)
  if len(leaves) != len(g.params):
    raise errors.ShapeError(f"variables have {len(leaves)} arrays but the traced model expects "
                            f"{len(g.params)}: pass the variables the model was traced with.")
  env = dict(zip(g.params, leaves))
  env.update(g.consts)
  env[g.input] = x
  return env


def read_outputs(g: Graph, env: dict):
  outs = [a.value if isinstance(a, Lit) else env[a] for a in g.outs]
  return jax.tree.unflatten(g.out_tree, outs)
