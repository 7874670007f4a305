"""Receptive field, effective stride and padding of every layer of a Flax CNN.

Derived from the traced model (`jaxdl.efficiency.graph`): the convolutions, pools, pads and
slices are read from the jaxpr, not from a table. Along each spatial axis a tensor has a
receptive field r (input pixels that one output position sees), a jump j (input pixels
between neighbouring outputs: the product of strides so far) and a start c (input coordinate
of the centre of output 0). A layer with kernel k, dilation d, stride s and low padding p
maps them as (Araujo et al. 2019, "Computing Receptive Fields of CNNs", Eq. 1-3):

    k' = (k - 1) d + 1,   r_out = r_in + (k' - 1) j_in,   j_out = j_in s,
    c_out = c_in + ((k' - 1) / 2 - p) j_in.

Position-wise ops keep (r, j, c); merges (residual adds, concatenations) take the input with
the largest receptive field. MCUNetV2's halo is the receptive field of the patch stage:
one output position of block `split - 1` needs an r x r input window.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from jaxdl.efficiency import graph as G


@dataclasses.dataclass(frozen=True)
class AxisRF:
  rf: int
  jump: int
  start: float

  def through(self, kernel: int, stride: int, pad_lo: int, dilation: int = 1) -> "AxisRF":
    keff = (kernel - 1) * dilation + 1
    return AxisRF(self.rf + (keff - 1) * self.jump, self.jump * stride,
                  self.start + ((keff - 1) / 2 - pad_lo) * self.jump)


@dataclasses.dataclass(frozen=True)
class LayerRF:
  """One layer: its geometry and the receptive field of its output."""
  index: int                      # node index in the traced graph
  name: str                       # Flax module path, e.g. "blocks_1_0/conv_dw"
  kind: str                       # conv, depthwise, pool, pad, slice, merge, concat, global
  block: str | None               # enclosing block, e.g. "blocks_1_0"
  kernel: tuple[int, int]
  stride: tuple[int, int]
  padding: tuple[tuple[int, int], tuple[int, int]]
  dilation: tuple[int, int]
  out_shape: tuple[int, ...]
  rf: tuple[int, int]
  jump: tuple[int, int]
  start: tuple[float, float]


def tensor_fields(g: G.Graph) -> dict:
  """(AxisRF rows, AxisRF cols) of every spatial tensor of the traced graph."""
  info = {g.input: (AxisRF(1, 1, 0.0), AxisRF(1, 1, 0.0))}
  for node in g.nodes:
    sp = [node.ins[i] for i in G.spatial_inputs(g, node) if node.ins[i] in info]
    if not sp or not node.outs or not g.is_spatial(node.outs[0]):
      continue
    if node.name in ("conv_general_dilated", "pad", "slice") or node.name in G.POOLS \
        or node.name == "reduce_window":
      geo = G.conv_geometry(node)
      src = info[sp[0]]
      out = tuple(src[a].through(geo["kernel"][a], geo["stride"][a], geo["padding"][a][0],
                                 geo["dilation"][a]) for a in range(2))
    else:
      out = tuple(max((info[v][a] for v in sp), key=lambda r: r.rf) for a in range(2))
    for o in node.outs:
      info[o] = out
  return info


def receptive_fields(model, variables, input_shape: Sequence[int]) -> list[LayerRF]:
  """Per-layer geometry and receptive field of `model` on inputs of `input_shape` (NHWC).

  Returns one `LayerRF` per convolution, pool, pad, slice and merge acting on spatial
  activations, in forward order; `rf`, `jump` and `start` are in input pixels (rows, cols).
  """
  return layer_fields(G.trace(model, variables, input_shape))


def layer_fields(g: G.Graph) -> list[LayerRF]:
  info = tensor_fields(g)
  rows = []
  for node in g.nodes:
    kind = G.layer_kind(g, node)
    if kind is None or kind in ("dense", "global") or node.outs[0] not in info:
      continue
    geo = G.conv_geometry(node)
    r = info[node.outs[0]]
    rows.append(LayerRF(
        index=node.index, name=node.module, kind=kind, block=G.block_of(node),
        kernel=tuple(geo["kernel"]), stride=tuple(geo["stride"]),
        padding=tuple(tuple(p) for p in geo["padding"]), dilation=tuple(geo["dilation"]),
        out_shape=tuple(node.outs[0].shape),
        rf=(r[0].rf, r[1].rf), jump=(r[0].jump, r[1].jump), start=(r[0].start, r[1].start)))
  return rows


def block_fields(model, variables, input_shape: Sequence[int]) -> list[dict]:
  """Receptive field at the output of every block: what `split = k + 1` puts in one patch."""
  g = G.trace(model, variables, input_shape)
  info = tensor_fields(g)
  out, last = [], {}
  for node in g.nodes:
    b = G.block_of(node)
    if b is not None and node.outs and node.outs[0] in info:
      last[b] = node.outs[0]
  for b in g.block_names():
    v = last[b]
    rh, rw = info[v]
    out.append({"block": b, "out_shape": tuple(v.shape), "rf": (rh.rf, rw.rf),
                "jump": (rh.jump, rw.jump)})
  return out
