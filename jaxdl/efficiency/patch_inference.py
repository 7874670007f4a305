"""Patch-based inference (MCUNetV2, Lin et al. NeurIPS 2021, Sec. 3.1; mit-han-lab/tinyengine
`code_generator/PatchBasedUtil.py`).

The memory of a CNN's forward pass peaks in its first, high-resolution blocks. MCUNetV2 runs
those blocks on one spatial patch at a time: the output of block `split - 1` (the "stage
output", [N, Hs, Ws, C]) is cut into n x n patches; for each, the input patch that its
receptive field needs (the patch plus a halo) is cut from the image, every layer of the
stage runs on it without padding except at the image borders (zero padding only there, as
the full model pads), and the result is written into the stage output buffer. The rest of the
network then runs layer by layer. Only one patch's buffers are alive at a time, so the peak
falls from the largest feature map to a patch's halo'd buffers plus the stage output; the
price is recomputing the overlapping halos (the MAC overhead reported by `mac_overhead`).

Here the layer structure comes from the model itself (`jaxdl.efficiency.graph.trace`): the
stage is every primitive before the first one of block `split`. A backward pass over the
stage gives, for each spatial tensor, the range of rows/columns one patch needs:
for a conv/pool with kernel k (dilation d), stride s, low padding p:
    output rows [a, a + L)  <-  input rows [a*s - p, (a + L - 1)*s - p + (k - 1)*d + 1),
elementwise ops keep the range, residual adds take the hull of what their consumers need.
Every range is affine in the patch's start `o` (start = scale * o + offset, fixed length), so
all patches share one shape and the patch loop is a `lax.fori_loop` over a single compiled
body. Positions outside the image are set to the value the full model pads with (0 for
convolutions, -inf for max pooling) right before each padded layer: that is exactly "zero
padding only at image borders". Patches have size ceil(Hs / n); when n does not divide Hs the
last patch is shifted back to end at the border (it overlaps its neighbour, whose outputs it
recomputes identically).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
from jax import lax

from jaxdl import errors
from jaxdl.efficiency import graph as G


@dataclasses.dataclass(frozen=True)
class AxisRange:
  """Rows (or columns) [scale * o + offset, scale * o + offset + length) for patch start o."""
  scale: int
  offset: int
  length: int

  def start(self, o):
    return self.scale * o + self.offset

  def hull(self, other: "AxisRange | None") -> "AxisRange":
    if other is None:
      return self
    if other.scale != self.scale:
      raise errors.ConfigError("a tensor is read at two different resolutions inside the "
                               "patch stage; patch-based inference needs one stride per tensor.")
    lo = min(self.offset, other.offset)
    hi = max(self.offset + self.length, other.offset + other.length)
    return AxisRange(self.scale, lo, hi - lo)

  def backward(self, kernel: int, stride: int, pad_lo: int, dilation: int = 1) -> "AxisRange":
    """The input range a conv/pool needs to produce this output range."""
    keff = (kernel - 1) * dilation + 1
    return AxisRange(self.scale * stride, self.offset * stride - pad_lo,
                     (self.length - 1) * stride + keff)

  def in_image(self, o: int, size: int) -> int:
    """How many positions of the range lie inside [0, size) for patch start o."""
    a = self.start(o)
    return max(0, min(a + self.length, size) - max(a, 0))


def patch_starts(size: int, num: int) -> tuple[int, tuple[int, ...]]:
  """Patch size ceil(size / num) and the start of each patch (the last one shifted back)."""
  if num < 1 or num > size:
    raise errors.ConfigError(f"num_patches={num} must be between 1 and the stage output size "
                             f"{size}; use fewer patches or an earlier split.")
  p = -(-size // num)
  return p, tuple(min(i * p, size - p) for i in range(num))


@dataclasses.dataclass(eq=False)
class PatchPlan:
  """Which nodes run per patch, the range of every tensor, and the patch grid."""
  graph: G.Graph
  split: int
  blocks: list[str]
  stage: list[G.Node]          # spatial nodes run per patch (in order)
  prelude: list[G.Node]        # position-independent nodes of the stage (run once)
  rest: list[G.Node]           # nodes run layer by layer after the stage
  outputs: list[G.Var]         # stage outputs assembled from patches
  ranges: dict                 # Var -> (AxisRange rows, AxisRange cols)
  need: dict                   # (Node, operand index) -> (AxisRange, AxisRange)
  patch: tuple[int, int]       # patch size at the stage output
  starts: tuple[tuple[int, ...], tuple[int, ...]]  # patch starts along rows / cols
  stage_shape: tuple[int, int]

  @property
  def num_patches(self) -> tuple[int, int]:
    return len(self.starts[0]), len(self.starts[1])


def _cut_index(g: G.Graph, blocks: list[str], split: int, pattern: str) -> int:
  """Index of the first node that runs layer by layer."""
  if not 0 <= split <= len(blocks):
    raise errors.ConfigError(f"split={split} is out of range: {g.model_name} has {len(blocks)} "
                             f"blocks, so split must be in 0..{len(blocks)}.")
  if split < len(blocks):
    return next(n.index for n in g.nodes if G.block_of(n, pattern) == blocks[split])
  return max(n.index for n in g.nodes if G.block_of(n, pattern) == blocks[-1]) + 1


def _unsupported(node: G.Node, why: str) -> errors.ConfigError:
  return errors.ConfigError(
      f"cannot run {node.name!r} at {node.module or 'the top level'} patch by patch ({why}); "
      f"choose a smaller split so that this layer runs layer by layer.")


def _backward_rule(g: G.Graph, node: G.Node, out: tuple[AxisRange, AxisRange]):
  """The range each spatial operand must provide for `node` to produce range `out`."""
  name = node.name
  spatial = G.spatial_inputs(g, node)
  if name in ("conv_general_dilated", "pad", "slice") or name in G.POOLS:
    geo = G.conv_geometry(node)
    r = tuple(out[a].backward(geo["kernel"][a], geo["stride"][a], geo["padding"][a][0],
                              geo["dilation"][a]) for a in range(2))
    if name == "conv_general_dilated" and 1 in spatial:
      raise _unsupported(node, "the kernel depends on the input")
    return {spatial[0]: r}
  if name in G.ELEMENTWISE or name in ("concatenate", "dot_general"):
    if name == "concatenate" and node.params["dimension"] in G.SPATIAL_AXES:
      raise _unsupported(node, "concatenation along a spatial axis")
    if name == "dot_general":
      (lc, rc), (lb, rb) = node.params["dimension_numbers"]
      if spatial != [0] or set(lc) & set(G.SPATIAL_AXES) or lb:
        raise _unsupported(node, "a matrix product over spatial positions")
    out_hw = node.outs[0].shape[1:3]
    for i in spatial:
      if node.ins[i].shape[1:3] != out_hw:
        raise _unsupported(node, "it combines the feature map with a pooled activation of "
                                 f"spatial size {node.ins[i].shape[1:3]}")
    for i, a in enumerate(node.ins):
      if isinstance(a, G.Var) and i not in spatial and len(a.shape) == 4 \
          and a.shape[1:3] != (1, 1) and a.shape[1:3] == out_hw:
        raise _unsupported(node, "a position-dependent constant")
    return {i: out for i in spatial}
  raise _unsupported(node, "it mixes spatial positions")


def make_plan(g: G.Graph, split: int, num_patches: int | Sequence[int],
              pattern: str = G.BLOCK_PATTERN) -> PatchPlan:
  """Plans patch-based inference of the traced model `g` with blocks[:split] per patch."""
  blocks = g.block_names(pattern)
  if not blocks:
    raise errors.ConfigError(f"{g.model_name} has no blocks named like {pattern!r}; patch-based "
                             f"inference needs the block list the model documents.")
  cut = _cut_index(g, blocks, split, pattern)
  stage_nodes, rest = g.nodes[:cut], g.nodes[cut:]
  defined = {o for n in stage_nodes for o in n.outs} | {g.input}
  used_later = {a for n in rest for a in n.ins if isinstance(a, G.Var)}
  used_later |= {a for a in g.outs if isinstance(a, G.Var)}
  crossing = [v for v in defined if v in used_later and v in g.activations]
  crossing.sort(key=lambda v: v.id)
  if not crossing:
    raise errors.ConfigError(f"split={split}: nothing computed before block {split} is used "
                             f"after it.")
  for v in crossing:
    if not g.is_spatial(v):
      raise errors.ConfigError(f"split={split}: a non-spatial activation {v.shape} crosses the "
                               f"split; choose a smaller split.")
  hw = {v.shape[1:3] for v in crossing}
  if len(hw) != 1:
    raise errors.ConfigError(f"split={split}: activations of different resolutions {sorted(hw)} "
                             f"cross the split; choose another split.")
  (hs, ws), = hw
  if isinstance(num_patches, int):
    num_patches = (num_patches, num_patches)
  ph, sh = patch_starts(hs, int(num_patches[0]))
  pw, sw = patch_starts(ws, int(num_patches[1]))

  ranges = {v: (AxisRange(1, 0, ph), AxisRange(1, 0, pw)) for v in crossing}
  need = {}
  spatial_nodes = []
  for node in reversed(stage_nodes):
    outs = [o for o in node.outs if o in ranges]
    if not outs:
      continue
    acts = [a for a in node.ins if isinstance(a, G.Var) and a in g.activations]
    if any(not g.is_spatial(a) for a in acts):
      raise _unsupported(node, "it reads a pooled (non-spatial) activation")
    if not acts:
      continue  # position-independent (parameters): computed once, at full size
    if len(node.outs) != 1:
      raise _unsupported(node, "several outputs")
    for i, r in _backward_rule(g, node, ranges[node.outs[0]]).items():
      need[(node, i)] = r
      a = node.ins[i]
      ranges[a] = (r[0].hull(ranges.get(a, (None, None))[0]),
                   r[1].hull(ranges.get(a, (None, None))[1]))
    spatial_nodes.append(node)
  spatial_nodes.reverse()
  prelude = [n for n in stage_nodes if not any(isinstance(a, G.Var) and a in g.activations
                                                for a in n.ins)]
  return PatchPlan(graph=g, split=split, blocks=blocks, stage=spatial_nodes, prelude=prelude,
                   rest=rest, outputs=crossing, ranges=ranges, need=need, patch=(ph, pw),
                   starts=(sh, sw), stage_shape=(hs, ws))


# ---------------------------------------------------------------------------------------------
# Execution


def _crop(x, have: tuple[AxisRange, AxisRange], want: tuple[AxisRange, AxisRange]):
  """The `want` window of a patch tensor that holds the `have` window (static offsets)."""
  starts, limits = [0] * x.ndim, list(x.shape)
  for axis, h, w in zip(G.SPATIAL_AXES, have, want):
    d = w.offset - h.offset
    if h.scale != w.scale or d < 0 or d + w.length > h.length:
      raise AssertionError(f"bad crop {have} -> {want}")
    starts[axis], limits[axis] = d, d + w.length
  if starts == [0] * x.ndim and limits == list(x.shape):
    return x
  return lax.slice(x, starts, limits)


def _mask(plan: PatchPlan, x, rng, full_hw, o, fill):
  """Sets positions of the window `rng` that lie outside the full tensor to `fill`."""
  valid = []
  for a in range(2):
    r, size = rng[a], full_hw[a]
    # Static check: skip the mask when no patch's window leaves the tensor.
    if all(r.start(s) >= 0 and r.start(s) + r.length <= size for s in plan.starts[a]):
      valid.append(None)
      continue
    idx = r.start(o[a]) + jnp.arange(r.length)
    valid.append((idx >= 0) & (idx < size))
  if valid[0] is None and valid[1] is None:
    return x
  vh = valid[0] if valid[0] is not None else jnp.ones((rng[0].length,), bool)
  vw = valid[1] if valid[1] is not None else jnp.ones((rng[1].length,), bool)
  m = vh[None, :, None, None] & vw[None, None, :, None]
  return jnp.where(m, x, jnp.asarray(fill, x.dtype))


def _gather_input(plan: PatchPlan, x, o):
  """The input window of the patch starting at o (rows/cols clipped; the mask fixes borders)."""
  rh, rw = plan.ranges[plan.graph.input]
  h, w = x.shape[1:3]
  ih = jnp.clip(rh.start(o[0]) + jnp.arange(rh.length), 0, h - 1)
  iw = jnp.clip(rw.start(o[1]) + jnp.arange(rw.length), 0, w - 1)
  return jnp.take(jnp.take(x, ih, axis=1), iw, axis=2)


def _run_patch(plan: PatchPlan, env: dict, x, o) -> list:
  """Runs the stage on the patch whose stage-output window starts at o = (row, col)."""
  g = plan.graph
  held = {g.input: _gather_input(plan, x, o)}
  for node in plan.stage:
    ins = []
    for i, a in enumerate(node.ins):
      if isinstance(a, G.Lit):
        ins.append(a.value)
      elif (node, i) in plan.need:
        want = plan.need[(node, i)]
        v = _crop(held[a], plan.ranges[a], want)
        if node.name == "conv_general_dilated" and i == 0:
          v = _mask(plan, v, want, a.shape[1:3], o, 0.0)
        elif node.name in G.POOLS:
          v = _mask(plan, v, want, a.shape[1:3], o, G.POOLS[node.name])
        elif node.name == "pad":
          v = _mask(plan, v, want, a.shape[1:3], o, node.ins[1].value
                    if isinstance(node.ins[1], G.Lit) else env[node.ins[1]])
        ins.append(v)
      else:
        ins.append(env[a])
    params = dict(node.params)
    if node.name == "conv_general_dilated":
      params["padding"] = ((0, 0), (0, 0))
    elif node.name in G.POOLS:
      params["padding"] = tuple((0, 0) if ax in G.SPATIAL_AXES else tuple(p)
                                for ax, p in enumerate(params["padding"]))
    elif node.name == "pad":
      # Border values were written by the mask; only non-spatial padding remains.
      params["padding_config"] = tuple((0, 0, 0) if ax in G.SPATIAL_AXES else tuple(c)
                                       for ax, c in enumerate(params["padding_config"]))
    elif node.name == "slice":
      st = params["strides"] or (1,) * len(params["start_indices"])
      starts = list(params["start_indices"])
      limits = list(params["limit_indices"])
      for ax in G.SPATIAL_AXES:
        starts[ax], limits[ax] = 0, ins[0].shape[ax]
      params.update(start_indices=tuple(starts), limit_indices=tuple(limits), strides=tuple(st))
    out = node.prim.bind(*ins, **params)
    rng = plan.ranges[node.outs[0]]
    expect = (rng[0].length, rng[1].length)
    if tuple(out.shape[1:3]) != expect:
      raise AssertionError(f"{node.module} {node.name}: patch output {out.shape} != {expect}")
    held[node.outs[0]] = out
  full = (AxisRange(1, 0, plan.patch[0]), AxisRange(1, 0, plan.patch[1]))
  return [_crop(held[v], plan.ranges[v], full) for v in plan.outputs]


def run_plan(plan: PatchPlan, variables, x):
  """Patch-based forward pass of a planned model: same outputs as `model.apply`."""
  g = plan.graph
  env = G.evaluate(plan.prelude, G.bind_inputs(g, variables, x))
  nh, nw = plan.num_patches
  starts_h = jnp.asarray(plan.starts[0], jnp.int32)
  starts_w = jnp.asarray(plan.starts[1], jnp.int32)

  def body(t, bufs):
    o = (starts_h[t // nw], starts_w[t % nw])
    outs = _run_patch(plan, env, x, o)
    zero = jnp.zeros((), jnp.int32)
    return [lax.dynamic_update_slice(b, p.astype(b.dtype), (zero, o[0], o[1], zero))
            for b, p in zip(bufs, outs)]

  bufs = [jnp.zeros(v.shape, v.dtype) for v in plan.outputs]
  bufs = lax.fori_loop(0, nh * nw, body, bufs)
  env.update(zip(plan.outputs, bufs))
  env = G.evaluate(plan.rest, env)
  return G.read_outputs(g, env)


def patch_apply(model, variables, x, *, split: int, num_patches: int | Sequence[int],
                block_pattern: str = G.BLOCK_PATTERN):
  """Patch-based inference: the same output as `model.apply(variables, x, train=False)`.

  Args:
    model: a Flax CNN taking NHWC images (MobileNetV2, MCUNet, ResNet, ...).
    variables: its variables (params and batch_stats).
    x: images [N, H, W, C].
    split: index of the first block run layer by layer; the stem and blocks[:split] run
      patch by patch. Blocks are the model's documented block list (top-level modules named
      `blocks_{i}_{j}` or `layer{s}_{b}`, see `jaxdl.efficiency.graph.BLOCK_PATTERN`).
    num_patches: n (an n x n grid) or (rows, cols) of patches at the stage output.

  Returns:
    The model's output (logits [N, num_classes]), equal to the layer-by-layer pass up to
    floating-point reassociation. Jittable (`jax.jit(partial(patch_apply, model, split=...,
    num_patches=...))`).
  """
  g = G.trace(model, variables, x.shape, x.dtype)
  plan = make_plan(g, split, num_patches, block_pattern)
  return run_plan(plan, variables, x)


# ---------------------------------------------------------------------------------------------
# Cost


def stage_macs(plan: PatchPlan) -> dict:
  """MACs (one image) of the patch stage run whole vs patch by patch, and of the rest.

  Patch MACs count only output positions inside the feature map (what a border-aware engine
  such as TinyEngine computes); the halo recomputation is the difference.
  """
  g = plan.graph
  full_stage = patched = 0
  for node in plan.stage:
    if node.name != "conv_general_dilated":
      continue
    out = node.outs[0]
    per_pos = G.macs_per_image(g, node) // (out.shape[1] * out.shape[2])
    rh, rw = plan.ranges[out]
    rows = sum(rh.in_image(s, out.shape[1]) for s in plan.starts[0])
    cols = sum(rw.in_image(s, out.shape[2]) for s in plan.starts[1])
    full_stage += G.macs_per_image(g, node)
    patched += rows * cols * per_pos
  rest = sum(G.macs_per_image(g, n) for n in plan.rest)
  return {"stage_full": int(full_stage), "stage_patched": int(patched), "rest": int(rest),
          "total_full": int(full_stage + rest), "total_patched": int(patched + rest)}


def mac_overhead(model, variables, input_shape, *, split: int,
                 num_patches: int | Sequence[int]) -> dict:
  """MAC overhead of patch-based inference from overlapping halos.

  Returns the `stage_macs` dict plus `overhead` = total_patched / total_full - 1 (whole
  network) and `stage_overhead` (patch stage only).
  """
  plan = make_plan(G.trace(model, variables, input_shape), split, num_patches)
  m = stage_macs(plan)
  m["overhead"] = m["total_patched"] / m["total_full"] - 1.0
  m["stage_overhead"] = m["stage_patched"] / max(m["stage_full"], 1) - 1.0
  return m
