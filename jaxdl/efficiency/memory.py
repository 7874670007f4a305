"""Activation memory of a CNN forward pass, layer by layer or patch by patch (MCUNetV2 Fig. 1).

Computed (`activation_memory`): the traced model's activations are assigned to buffers and
the memory at each layer is the total size of the buffers alive there: the layer's inputs
and output plus every tensor kept for later (residual inputs), as mcunet's
`count_peak_activation_size` counts (input + output per layer, plus the residual buffer).
Position-wise ops (BatchNorm, ReLU6) run in place on their input when nothing else reads it.
With `inplace=True` two TinyEngine tricks that the MCUNetV2 numbers assume are applied:
depthwise convolutions run in place (output written over the input, Lin et al. 2021 Sec. 3
/ TinyEngine "in-place depthwise"), and a residual add fused into the 1x1 projection that
produces its second operand writes into the residual buffer. With these, MobileNetV2 at 224
(int8) peaks at 1372 kB, the number MCUNetV2 reports.

Patch schedule (`split`, `num_patches`): the stage's layers hold one patch (with halo) at a
time; the stage outputs (full size, being assembled) are alive throughout the stage; the
input image is read patch by patch (`input_resident=True` keeps the whole image alive during
the stage instead). Then the rest runs layer by layer.

Measured (`measured_memory`): XLA's buffer assignment of the compiled forward pass
(`jax.jit(...).lower(...).compile().memory_analysis()`): `temp_size_in_bytes` is the scratch
arena for every intermediate (XLA reuses buffers whose live ranges do not overlap, so it is
its peak of intermediates, including fusion outputs, conv scratch and loop carries),
`argument_size_in_bytes` the inputs (parameters and the image), `output_size_in_bytes` the
logits. XLA runs neither in-place depthwise nor int8, so compare it with the computed float32
numbers with `inplace=False`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import errors
from jaxdl.efficiency import graph as G
from jaxdl.efficiency import patch_inference as P
from jaxdl.layers.conv import conv_impl

_BYTES = {"int8": 1, "uint8": 1, "int4": 0.5, "float16": 2, "bfloat16": 2, "float32": 4}


def bytes_per_element(dtype) -> float:
  key = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
  if key not in _BYTES:
    raise errors.unknown_name("activation dtype", key, _BYTES)
  return _BYTES[key]


@dataclasses.dataclass(eq=False)
class _Buf:
  vars: list = dataclasses.field(default_factory=list)


def _is_pointwise_conv(node: G.Node) -> bool:
  if node.name != "conv_general_dilated":
    return False
  geo = G.conv_geometry(node)
  return geo["kernel"] == (1, 1) and geo["stride"] == (1, 1) \
      and node.params["feature_group_count"] == 1


def schedule_memory(g: G.Graph, nodes: Sequence[G.Node], sizes: dict, *, inplace: bool,
                    alive_inputs: Sequence[G.Var] = ()) -> list:
  """Memory (elements) at every node of `nodes` run in order.

  Args:
    g: the traced graph.
    nodes: the nodes of this schedule (others are ignored).
    sizes: Var -> number of elements of that activation in this schedule.
    inplace: in-place depthwise convs and residual adds fused into 1x1 projections.
    alive_inputs: activations that exist before the first node (the image, stage outputs).
  Returns:
    [(node, elements alive at that node)] for nodes that touch activations.
  """
  pos = {n: i for i, n in enumerate(nodes)}
  users = {}
  for n in nodes:
    for a in n.ins:
      if isinstance(a, G.Var) and a in sizes:
        users.setdefault(a, []).append(n)
  buf = {}

  def new(v):
    buf[v] = _Buf([v])

  for v in alive_inputs:
    if v in sizes:
      new(v)

  def alias(v, b):
    buf[v] = b
    b.vars.append(v)

  def sole_user(a, n):
    return users.get(a, []) == [n]

  # Residual adds fused into the 1x1 conv producing one operand: that conv writes into the
  # other operand's (residual) buffer. Found before assignment: {conv node: residual var}.
  def pointwise_source(b, add):
    """The 1x1 conv whose output reaches `add` as `b` through position-wise ops only."""
    v, consumer = b, add
    while True:
      if users.get(v) != [consumer]:
        return None
      p = g.producer.get(v)
      if p is None or p not in pos:
        return None
      if _is_pointwise_conv(p):
        return p
      acts_p = [a for a in p.ins if isinstance(a, G.Var) and a in sizes]
      if G.layer_kind(g, p) is not None or len(acts_p) != 1:
        return None
      v, consumer = acts_p[0], p

  fused = {}
  if inplace:
    for n in nodes:
      if G.layer_kind(g, n) != "merge" or n.name not in ("add", "add_any"):
        continue
      acts = [a for a in n.ins if isinstance(a, G.Var) and a in sizes]
      for b_op, a_op in ((acts[0], acts[1]), (acts[1], acts[0])):
        conv = pointwise_source(b_op, n)
        a_def = pos.get(g.producer.get(a_op), -1)
        if (conv is not None and users[a_op][-1] is n and sizes[a_op] == sizes[b_op]
            and a_def < pos[conv]):
          fused[conv] = a_op
          break

  for n in nodes:
    acts = [a for a in n.ins if isinstance(a, G.Var) and a in sizes]
    if not acts:
      continue
    outs = [o for o in n.outs if o in sizes]
    kind = G.layer_kind(g, n)
    for o in outs:
      if n in fused:
        alias(o, buf[fused[n]])
      elif kind is None and len({a.id for a in acts}) == 1 and sole_user(acts[0], n) \
          and sizes[acts[0]] >= sizes[o]:
        alias(o, buf[acts[0]])                   # position-wise op in place
      elif kind == "merge":
        free = [a for a in acts if sole_user(a, n) or users[a][-1] is n]
        free = [a for a in free if sizes[a] >= sizes[o]]
        if free:
          alias(o, buf[free[0]])                 # add in place into a dying operand
        else:
          new(o)
      elif inplace and kind == "depthwise" and sole_user(acts[0], n):
        alias(o, buf[acts[0]])                   # TinyEngine in-place depthwise
      else:
        new(o)
  # A buffer holds one tensor after another (in-place ops hand it over); at node i it
  # occupies the largest of its tensors alive at i.
  end = len(nodes)
  first = {v: -1 for v in alive_inputs if v in buf}
  last = {}
  for n in nodes:
    for o in n.outs:
      if o in buf:
        first[o] = pos[n]
    for a in n.ins:
      if isinstance(a, G.Var) and a in buf:
        last[a] = max(last.get(a, -1), pos[n])
  for v in g.outs:
    if isinstance(v, G.Var) and v in buf:
      last[v] = end
  bufs = {id(b): b for b in buf.values()}.values()
  out = []
  for n in nodes:
    if not any(isinstance(a, G.Var) and a in sizes for a in n.ins):
      continue
    i = pos[n]
    total = 0
    for b in bufs:
      live = [sizes[v] for v in b.vars if first.get(v, i + 1) <= i <= last.get(v, first[v])]
      total += max(live, default=0)
    out.append((n, total))
  return out


def _rows(g, mem, bpe, stage, extra=0):
  """Per-layer rows: each layer's node plus the fused position-wise ops that follow it."""
  rows = []
  for n, elems in mem:
    kind = G.layer_kind(g, n)
    if kind is None and rows:
      rows[-1]["bytes"] = max(rows[-1]["bytes"], int(round((elems + extra) * bpe)))
      continue
    rows.append({"index": n.index, "name": n.module or n.name, "kind": kind or n.name,
                 "block": G.block_of(n),
                 "stage": stage, "out_shape": tuple(n.outs[0].shape) if n.outs else (),
                 "bytes": int(round((elems + extra) * bpe))})
  return rows


def _summary(rows):
  peak = max(rows, key=lambda r: r["bytes"])
  return {"peak_bytes": peak["bytes"], "peak_layer": peak["name"], "peak_stage": peak["stage"],
          "per_layer": rows}


def layer_memory(g: G.Graph, *, dtype="int8", inplace=True) -> dict:
  """Layer-by-layer schedule of a traced graph."""
  sizes = {v: v.size for v in g.activations if isinstance(v, G.Var)}
  mem = schedule_memory(g, g.nodes, sizes, inplace=inplace, alive_inputs=[g.input])
  return _summary(_rows(g, mem, bytes_per_element(dtype), "layer"))


def plan_memory(plan: P.PatchPlan, *, dtype="int8", inplace=True,
                input_resident=False) -> dict:
  """Patch-based schedule: stage per patch (+ assembled stage outputs), then layer by layer."""
  g = plan.graph
  bpe = bytes_per_element(dtype)
  n_batch = g.input.shape[0]
  sizes = {}
  for v, (rh, rw) in plan.ranges.items():
    sizes[v] = n_batch * rh.length * rw.length * v.shape[-1]
  if input_resident:
    sizes[g.input] = g.input.size
  stage_out = sum(v.size for v in plan.outputs)
  mem = schedule_memory(g, plan.stage, sizes, inplace=inplace, alive_inputs=[g.input])
  rows = _rows(g, mem, bpe, "patch", extra=stage_out)
  full = {v: v.size for v in g.activations if isinstance(v, G.Var)}
  mem = schedule_memory(g, plan.rest, full, inplace=inplace, alive_inputs=plan.outputs)
  rows += _rows(g, mem, bpe, "layer")
  out = _summary(rows)
  out["stage_output_bytes"] = int(round(stage_out * bpe))
  out["patch_peak_bytes"] = max([r["bytes"] for r in rows if r["stage"] == "patch"] or [0])
  out["layer_peak_bytes"] = max([r["bytes"] for r in rows if r["stage"] == "layer"] or [0])
  return out


def activation_memory(model, variables, input_shape: Sequence[int], *, split: int | None = None,
                      num_patches: int | Sequence[int] | None = None, dtype="int8",
                      inplace: bool = True, input_resident: bool = False) -> dict:
  """Per-layer activation memory of a forward pass and its peak.

  Args:
    model, variables: a Flax CNN and its variables (arrays or ShapeDtypeStructs).
    input_shape: [N, H, W, C] of the input.
    split, num_patches: when given, the patch-based schedule (stem and blocks[:split] per
      patch on an n x n grid); without, the layer-by-layer schedule.
    dtype: activation storage type: "int8" (MCU deployment), "float32", "float16", ...
    inplace: in-place depthwise convs and fused residual adds (TinyEngine; see module doc).
    input_resident: keep the whole input image alive during the patch stage.

  Returns:
    {"peak_bytes": int, "peak_layer": str, "peak_stage": "patch" | "layer",
     "per_layer": [{"index", "name", "kind", "block", "stage", "out_shape", "bytes"}, ...]}
    (index: the layer's node in the traced graph) and, for the
    patch schedule, "stage_output_bytes", "patch_peak_bytes", "layer_peak_bytes".
  """
  g = G.trace(model, variables, input_shape)
  if split is None:
    if num_patches is not None:
      raise errors.ConfigError("num_patches needs split: pass both (split=k, num_patches=n) "
                               "for the patch-based schedule, or neither.")
    return layer_memory(g, dtype=dtype, inplace=inplace)
  if num_patches is None:
    raise errors.ConfigError("split needs num_patches: pass both for the patch-based schedule.")
  plan = P.make_plan(g, split, num_patches)
  return plan_memory(plan, dtype=dtype, inplace=inplace, input_resident=input_resident)


def measured_memory(model, variables, input_shape: Sequence[int], *, split: int | None = None,
                    num_patches: int | Sequence[int] | None = None, dtype=jnp.float32) -> dict:
  """XLA's memory analysis of the compiled forward pass (full, or patch-based with `split`).

  Returns {"temp_bytes", "argument_bytes", "output_bytes", "alias_bytes", "total_bytes",
  "device"}: temp is XLA's arena for intermediates (the activation peak as XLA schedules it),
  total = argument + output + temp - alias. Both programs are traced with plain
  convolutions (`conv_impl("xla")`: no CPU matmul / shifted-sum formulations, which change
  XLA's buffers), the layer graph a microcontroller runtime executes, so full and
  patch-based numbers compare like for like.
  """
  structs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)),
                         variables)
  x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
  if split is None:
    fn = lambda v, x: model.apply(v, x, train=False)
  else:
    fn = lambda v, x: P.patch_apply(model, v, x, split=split, num_patches=num_patches)
  with conv_impl("xla"):
    compiled = jax.jit(fn).lower(structs, x).compile()
  m = compiled.memory_analysis()
  out = {"temp_bytes": int(m.temp_size_in_bytes), "argument_bytes": int(m.argument_size_in_bytes),
         "output_bytes": int(m.output_size_in_bytes), "alias_bytes": int(m.alias_size_in_bytes),
         "device": jax.devices()[0].device_kind}
  out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                        - out["alias_bytes"])
  peak = getattr(m, "peak_memory_in_bytes", 0) or 0
  if peak:
    out["peak_bytes"] = int(peak)
  return out


def plot_memory(result: dict, ax=None, baseline: dict | None = None, title: str | None = None):
  """Bar chart of memory per layer (MCUNetV2 Fig. 1); `baseline` overlays another schedule."""
  import matplotlib.pyplot as plt
  if ax is None:
    _, ax = plt.subplots(figsize=(10, 3.5))
  kb = lambda rows: [r["bytes"] / 1024 for r in rows]
  if baseline is not None:
    ax.bar(range(len(baseline["per_layer"])), kb(baseline["per_layer"]), color="0.75",
           label=f"layer by layer (peak {baseline['peak_bytes'] / 1024:.0f} kB)")
  rows = result["per_layer"]
  colors = ["tab:orange" if r["stage"] == "patch" else "tab:blue" for r in rows]
  label = "patch-based" if any(r["stage"] == "patch" for r in rows) else "layer by layer"
  ax.bar(range(len(rows)), kb(rows), color=colors, alpha=0.9,
         label=f"{label} (peak {result['peak_bytes'] / 1024:.0f} kB)")
  ax.set_xlabel("layer")
  ax.set_ylabel("activation memory (kB)")
  if title:
    ax.set_title(title)
  ax.legend()
  return ax
