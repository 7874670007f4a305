"""The prior-data fitted network (PFN) transformer.

Müller et al., "Transformers Can Do Bayesian Inference" (ICLR 2022), section 4 and figure 1,
and TabPFN (Hollmann et al., ICLR 2023). One forward pass maps a dataset of context pairs
(x_i, y_i), i < n, and query inputs x_j, j >= n, to a predictive distribution for each query:

- Each context row becomes one token, enc_x(x_i) + enc_y(y_i); each query row becomes
  enc_x(x_j) (its y is never read). Both encoders are linear layers, as in the paper.
- No positional encoding: the rows of a dataset are a set, and the network is equivariant to
  permutations of the context and of the queries.
- Attention: every token (context or query) attends to the context tokens only. Context
  tokens therefore never see the queries, and a query never sees another query, so
  predictions for different queries are independent of each other (the paper's attention
  mask, figure 1 right, without the query self-edge of the first release).
- Pre-LayerNorm transformer blocks (attention + GELU MLP), a final LayerNorm, and a decoder
  Dense-GELU-Dense to `num_classes` logits per token: the buckets of a Riemann distribution
  for regression (`jaxdl.inference.pfn.BarDistribution`) or the classes for classification.

Inputs are a dict `{"x": [B, T, F], "y": [B, T], "num_context": [B] int}` where the first
`num_context[b]` rows of dataset b are the context and the rest are queries; the output is
`[B, T, num_classes]` logits, meaningful at the query rows.

Registered variants: "pfn" (emsize 256, 4 layers), "pfn_small" (128, 4), "pfn_gp" (the shipped
GP-regression PFN, see jaxdl/inference/pfn_weights/), "pfn_tabular" (TabPFN-style classifier
backbone).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl import errors
from jaxdl.layers import Dense, DenseGeneral, activations
from jaxdl.models.registry import register


def context_mask(num_context, seq_len: int):
  """[B, T] bool: True where the row is a context row (index < num_context[b])."""
  return jnp.arange(seq_len)[None, :] < jnp.asarray(num_context)[:, None]


class ContextAttention(nn.Module):
  """Multi-head attention in which every token attends to the context tokens only."""
  num_heads: int
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, is_context, context_rows: int | None = None):
    d = x.shape[-1]
    if d % self.num_heads:
      raise errors.ConfigError(
          f"PFN emsize {d} is not divisible by num_heads {self.num_heads}; choose them so.")
    hd = d // self.num_heads
    dense = partial(DenseGeneral, dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = dense((3, self.num_heads, hd), name="qkv")(x)  # [B, T, 3, H, hd]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if context_rows is not None:
      # Every context row lies in the first `context_rows` positions: the other keys are
      # never attended to, so drop them (cost O(T * n) instead of O(T^2)).
      k, v, is_context = k[:, :context_rows], v[:, :context_rows], is_context[:, :context_rows]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(hd)
    mask = is_context[:, None, None, :]
    # Multiplying by the mask after the softmax keeps a dataset with an empty context at
    # exactly zero attention output (a -inf mask alone would average over all tokens).
    weights = jax.nn.softmax(jnp.where(mask, logits, -1e30), -1) * mask
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    return dense(d, axis=(-2, -1), name="out")(out)


class Block(nn.Module):
  """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""
  num_heads: int
  hidden: int
  dropout: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, is_context, train: bool = False, context_rows: int | None = None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.LayerNorm(name="ln_1", **kw)(x)
    h = ContextAttention(self.num_heads, name="attn", **kw)(h, is_context, context_rows)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.LayerNorm(name="ln_2", **kw)(x)
    h = Dense(self.hidden, name="fc1", **kw)(h)
    h = activations.gelu(h)
    h = Dense(x.shape[-1], name="fc2", **kw)(h)
    return x + nn.Dropout(self.dropout, deterministic=not train)(h)


class PFN(nn.Module):
  """A PFN transformer (see the module docstring).

  Attributes:
    num_classes: logits per query: Riemann buckets (regression) or classes.
    emsize: token width.
    num_layers: transformer blocks.
    num_heads: attention heads.
    hidden: width of the blocks' MLPs.
    decoder_hidden: width of the decoder's hidden layer.
    dropout: dropout rate in the blocks (0 in the paper).
  """
  num_classes: int = 1000
  emsize: int = 256
  num_layers: int = 4
  num_heads: int = 4
  hidden: int = 512
  decoder_hidden: int = 512
  dropout: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, train: bool = False, context_rows: int | None = None):
    """Logits [B, T, num_classes] for inputs {"x", "y", "num_context"} (module docstring).

    `context_rows` (a Python int, static) promises that num_context <= context_rows for
    every dataset, which lets attention skip the keys beyond it (inference with many
    queries placed after the context).
    """
    if not isinstance(inputs, dict) or not {"x", "y", "num_context"} <= set(inputs):
      raise errors.ShapeError(
          "PFN inputs must be a dict with keys x [B, T, F], y [B, T] and num_context [B]; "
          f"got {type(inputs).__name__}{sorted(inputs) if isinstance(inputs, dict) else ''}.")
    x = jnp.asarray(inputs["x"], jnp.float32)
    y = jnp.asarray(inputs["y"], jnp.float32)
    if x.ndim == 2:
      x = x[..., None]
    if x.ndim != 3 or y.shape != x.shape[:2]:
      raise errors.ShapeError(
          f"PFN expects x [B, T, F] and y [B, T]; got x {tuple(x.shape)} and y "
          f"{tuple(y.shape)}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    is_context = context_mask(inputs["num_context"], x.shape[1])
    # A query's y is zeroed before the encoder, so it cannot leak into any output.
    y = jnp.where(is_context, y, 0.0)
    h = Dense(self.emsize, name="x_encoder", **kw)(x)
    h_y = Dense(self.emsize, name="y_encoder", **kw)(y[..., None])
    h = h + jnp.where(is_context[..., None], h_y, 0.0)
    for i in range(self.num_layers):
      h = Block(self.num_heads, self.hidden, self.dropout, name=f"blocks_{i}", **kw)(
          h, is_context, train, context_rows)
    h = nn.LayerNorm(name="norm", **kw)(h)
    h = Dense(self.decoder_hidden, name="decoder_fc1", **kw)(h)
    h = activations.gelu(h)
    h = Dense(self.num_classes, name="decoder_fc2", **kw)(h)
    return h.astype(jnp.float32)


register("pfn", PFN, family="pfn")
register("pfn_small", partial(PFN, emsize=128, num_layers=4, num_heads=4, hidden=256,
                              decoder_hidden=256), family="pfn")
register("pfn_gp", partial(PFN, num_classes=500, emsize=128, num_layers=4, num_heads=4,
                           hidden=256, decoder_hidden=256), family="pfn")
register("pfn_tabular", partial(PFN, num_classes=10, emsize=256, num_layers=6, num_heads=4,
                                hidden=512, decoder_hidden=512), family="pfn")
