"""Prototype distance + global min-pool: the hot op of part-prototype networks.

For features z [N, HW, D] (a feature map with its spatial axes flattened) and prototypes
p [P, D] this computes, for every image n and prototype j,

  min_distance[n, j] = min_hw  d(z[n, hw], p[j])      argmin[n, j] = the hw attaining it

with two metrics:
  "l2":  d = relu(||z||^2 - 2 z.p + ||p||^2)   (ProtoPNet, Chen et al. 2019, `_l2_convolution`
         followed by `-max_pool2d(-distances)` in cfchen-duke/ProtoPNet model.py)
  "dot": d = -z.p                               (EvalProtoPNet / ST-ProtoPNet: with z and p
         L2-normalized this is minus the cosine similarity, with only p normalized it is minus
         the projection; global max pooling of the similarity = min of d)

XLA materializes the [N, HW, P] distance map (125 MB in float32 for batch 80, 14x14 maps and
2000 prototypes), writes it and reads it back for the min; the Pallas kernel keeps each
[block_n * HW, block_p] tile on chip and writes only [N, P] minima and their positions. The
backward pass needs only those positions: the gradient of a min flows to its argmin, so
  dL/dp[j]     = sum_n g[n, j] * 2 (p[j] - z[n, a[n, j]])          ("l2")
  dL/dz[n, hw] = sum_j [a[n, j] = hw] g[n, j] * 2 (z[n, hw] - p[j])
which are two matmuls with the one-hot matrix of positions (MXU / tensor-core friendly).

File order (STYLE.md, Kernels): block sizes, kernel, jitted wrapper, custom_vjp, reference,
dispatcher, benchmark. The kernel uses only portable Pallas (grid + BlockSpec, jnp inside the
body): it targets Pallas TPU (Mosaic) and runs in interpret mode on CPU (the tests). On GPU
it is lowered through Pallas' Triton backend (Mosaic GPU, which JAX recommends on Hopper,
has no array-level dot: it needs a wgmma kernel on shared-memory refs, future work). Checked
without a device: `jax.export` lowers the kernel for "tpu" (Mosaic) and for "cuda" (Triton
IR). Run on an H100 (jax 0.11.2, tools/gpu_check.py and tools/bench_gpu.py): the Triton
lowering is correct but computes float32 dots in tf32 (min distances within 1.3e-4 of
float64, XLA's default GPU precision does the same) and is 2.8x slower than XLA forward +
backward on ProtoPNet's shapes, so "auto" keeps XLA on GPU. Not yet run on a TPU.

Mosaic GPU (Hopper; `impl="mosaic_gpu"`, `_mosaic_gpu_call`): TMA copies of z[n] and a p^T
tile to swizzled SMEM, `wgmma` per 64-row chunk into a float32 register accumulator, the
distance, the min and the first position attaining it computed in registers (cross-warp
reductions), [block_p] results per program. bf16/f16 only. Tested on CPU in Mosaic GPU
interpret mode against float64, CUDA lowering checked by `jax.export`; written after the
H100 session, so neither compiled by ptxas nor timed on a GPU yet (`tools/gpu_check.py`,
`tools/bench_gpu.py` run both first).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxdl.kernels import portable_compiler_params
from jaxdl.layers import dense

METRICS = ("l2", "dot")
Metric = Literal["l2", "dot"]


# ----------------------------------------------------------------------------- block sizes


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes of the kernel.

  Attributes:
    block_n: images per program (the batch is padded to a multiple).
    block_p: prototypes per program (the prototypes are padded to a multiple). On TPU the
      output tile [block_n, block_p] wants block_p a multiple of 128 and block_n of 8.
    hw_multiple: the spatial axis is padded to a multiple of this (sublane tiling: 8 on TPU);
      0 pads it to the next power of two (at least 16), as Triton's tiles must be.
  """
  block_n: int = 8
  block_p: int = 128
  hw_multiple: int = 8

  def __post_init__(self):
    for name in ("block_n", "block_p"):
      v = getattr(self, name)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"BlockSizes.{name} must be a positive int, got {v!r}")
    if not isinstance(self.hw_multiple, int) or self.hw_multiple < 0:
      raise ValueError(f"BlockSizes.hw_multiple must be an int >= 0, got {self.hw_multiple!r}")

  @classmethod
  def for_backend(cls, backend: str) -> "BlockSizes":
    if backend == "gpu":  # Triton: power-of-two tiles, dot operands >= 16.
      return cls(block_n=4, block_p=64, hw_multiple=0)
    return cls()


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _padded_hw(hw: int, multiple: int) -> int:
  if multiple == 0:
    return max(16, pl.next_power_of_2(hw))
  return _round_up(hw, multiple)


# ----------------------------------------------------------------------------- kernel


def _min_distance_kernel(z_ref, p_ref, dist_ref, idx_ref, *, metric: str, hw: int):
  """One program: a [block_n, HWp, D] feature tile against a [block_p, D] prototype tile."""
  z = z_ref[...]
  p = p_ref[...]
  bn, hwp, d = z.shape
  bp = p.shape[0]
  zf = z.reshape(bn * hwp, d)
  # [bn * HWp, bp] inner products, accumulated in float32.
  s = jax.lax.dot_general(zf, p, (((1,), (1,)), ((), ())),
                          preferred_element_type=jnp.float32)
  if metric == "l2":
    zf32 = zf.astype(jnp.float32)
    p32 = p.astype(jnp.float32)
    zz = jnp.sum(zf32 * zf32, axis=1, keepdims=True)
    pp = jnp.sum(p32 * p32, axis=1)[None, :]
    dist = jnp.maximum(zz - 2.0 * s + pp, 0.0)
  else:
    dist = -s
  dist = dist.reshape(bn, hwp, bp)
  row = jax.lax.broadcasted_iota(jnp.int32, (bn, hwp, bp), 1)
  dist = jnp.where(row < hw, dist, jnp.inf)  # padded positions never win
  m = jnp.min(dist, axis=1)
  # First position attaining the min (argmin's tie rule), via a min over masked positions:
  # portable across backends that lack an argmin lowering.
  idx = jnp.min(jnp.where(dist == m[:, None, :], row, hwp), axis=1)
  dist_ref[...] = m
  idx_ref[...] = idx.astype(jnp.int32)


def _mosaic_gpu_call(z, p, *, metric: str, block_p: int, interpret: bool):
  """Mosaic GPU (Hopper) kernel: (min [N, P] f32, argmin [N, P] int32) for bf16/f16 z, p.

  Grid (image n, prototype tile j). One `emit_pipeline` step copies z[n] ([HWp, D], HW
  padded to a multiple of 64) and the [D, block_p] tile of p^T to swizzled SMEM with TMA.
  For each 64-row chunk, `wgmma` computes the [64, block_p] inner products into a float32
  register accumulator; the distance d = rowbias - 2 s + colbias (l2: rowbias = ||z||^2,
  colbias = ||p||^2; dot: d = -s + rowbias with rowbias = 0) is formed in registers, where
  padded rows carry rowbias = +inf so they never win. A running min over chunks and the
  first row attaining it (compare with the chunk min, then a min over the row indices, kept
  as float32) leave the chip: [block_p] minima and positions per program, never the
  [HW, P] map. relu for "l2" is applied to the min (relu is monotone).
  """
  from jax.experimental.pallas import mosaic_gpu as plgpu
  from jaxdl.kernels import _mosaic_gpu as mgpu
  n, hw, d = z.shape
  num_p = p.shape[0]
  tm, tp = 64, block_p
  hwp, p_pad = _round_up(hw, tm), _round_up(num_p, tp)
  dt = z.dtype
  if metric == "l2":
    rowbias = jnp.sum(jnp.square(z.astype(jnp.float32)), axis=-1)
    colbias = jnp.sum(jnp.square(p.astype(jnp.float32)), axis=-1)
  else:
    rowbias = jnp.zeros((n, hw), jnp.float32)
    colbias = jnp.zeros((num_p,), jnp.float32)
  rowbias = jnp.pad(rowbias, ((0, 0), (0, hwp - hw)), constant_values=jnp.inf).reshape(-1)
  colbias = jnp.pad(colbias, (0, p_pad - num_p))
  zf = jnp.pad(z, ((0, 0), (0, hwp - hw), (0, 0))).reshape(n * hwp, d)
  pt = jnp.pad(p.astype(dt), ((0, p_pad - num_p), (0, 0))).T  # [D, P_pad]: wgmma's B
  rows = jnp.arange(hwp, dtype=jnp.float32)
  wgmma = plgpu.Layout.WGMMA
  transforms = mgpu.swizzle_transforms((d, tp), dt)

  def kernel(z_g, pt_g, rb_g, cb_g, rows_g, dist_g, idx_g, o_smem, i_smem):
    pid_n = jax.lax.axis_index("n")
    pid_p = jax.lax.axis_index("p")

    def body(_, z_smem, pt_smem, rb_smem, cb_smem, rows_smem):
      cb = mgpu.layout_cast(cb_smem[...], wgmma.reduce(0), interpret)
      best = best_idx = None
      for c in range(hwp // tm):
        def chunk_dot(acc, c=c):
          plgpu.wgmma(acc, z_smem.at[pl.ds(c * tm, tm)], pt_smem)
          plgpu.wgmma_wait(0)
          return acc[...]
        s = pl.run_scoped(chunk_dot, plgpu.ACC((tm, tp), jnp.float32))
        rb = mgpu.layout_cast(rb_smem[pl.ds(c * tm, tm)], wgmma.reduce(1), interpret)
        r = mgpu.layout_cast(rows_smem[pl.ds(c * tm, tm)], wgmma.reduce(1), interpret)
        dist = jax.lax.broadcast_in_dim(rb, s.shape, [0])
        if metric == "l2":
          dist = dist - 2.0 * s + jax.lax.broadcast_in_dim(cb, s.shape, [1])
        else:
          dist = dist - s
        m = jnp.min(dist, axis=0)
        hit = dist == jax.lax.broadcast_in_dim(m, s.shape, [1])
        a = jnp.min(jnp.where(hit, jax.lax.broadcast_in_dim(r, s.shape, [0]),
                              jnp.float32(hwp)), axis=0)
        if best is None:
          best, best_idx = m, a
        else:  # strict <: an earlier chunk keeps ties (argmin's first-position rule)
          better = m < best
          best_idx = jnp.where(better, a, best_idx)
          best = jnp.where(better, m, best)
      o_smem[...] = jnp.maximum(best, 0.0) if metric == "l2" else best
      i_smem[...] = best_idx
      plgpu.commit_smem()
      out = pl.ds(pid_n * p_pad + pid_p * tp, tp)
      plgpu.copy_smem_to_gmem(o_smem, dist_g.at[out])
      plgpu.copy_smem_to_gmem(i_smem, idx_g.at[out])
      plgpu.wait_smem_to_gmem(0)

    plgpu.emit_pipeline(
        body, grid=(1,),
        in_specs=[
            plgpu.BlockSpec((hwp, d), lambda k: (pid_n, 0), transforms=transforms),
            plgpu.BlockSpec((d, tp), lambda k: (0, pid_p), transforms=transforms),
            plgpu.BlockSpec((hwp,), lambda k: (pid_n,)),
            plgpu.BlockSpec((tp,), lambda k: (pid_p,)),
            plgpu.BlockSpec((hwp,), lambda k: (0,)),
        ],
    )(z_g, pt_g, rb_g, cb_g, rows_g)

  call = plgpu.kernel(
      kernel,
      out_type=(jax.ShapeDtypeStruct((n * p_pad,), jnp.float32),
                jax.ShapeDtypeStruct((n * p_pad,), jnp.float32)),
      scratch_types=dict(o_smem=plgpu.SMEM((tp,), jnp.float32),
                         i_smem=plgpu.SMEM((tp,), jnp.float32)),
      grid=(n, p_pad // tp), grid_names=("n", "p"),
      interpret=mgpu.interpret_params() if interpret else None,
  )
  dist, idx = call(zf, pt, rowbias, colbias, rows)
  dist = dist.reshape(n, p_pad)[:, :num_p]
  idx = idx.reshape(n, p_pad)[:, :num_p].astype(jnp.int32)
  return dist, idx


def mosaic_gpu_supported(z_shape, dtype) -> bool:
  """Whether the Mosaic GPU kernel takes these shapes (else the dispatcher uses XLA)."""
  return (jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
          and z_shape[-1] % 64 == 0 and z_shape[-1] <= 256)


# ----------------------------------------------------------------------------- wrapper


def _check_inputs(z, p, metric):
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
  if z.ndim != 3:
    raise ValueError(f"features must be [batch, positions, dim], got shape {z.shape}")
  if p.ndim != 2:
    raise ValueError(f"prototypes must be [num_prototypes, dim], got shape {p.shape}")
  if z.shape[-1] != p.shape[-1]:
    raise ValueError(f"feature dim {z.shape[-1]} != prototype dim {p.shape[-1]}; "
                     "the add-on layers must output the prototype dimension")


def prototype_min_distance_pallas(z, p, *, metric: Metric = "l2",
                                  block_sizes: BlockSizes | None = None,
                                  interpret: bool = False):
  """The Pallas kernel (forward only): (min_distance [N, P] f32, argmin [N, P] int32).

  z: [N, HW, D] features, p: [P, D] prototypes (same dtype; bf16 is fine, the dot product
  accumulates in float32).
  """
  # The backend is resolved here, outside jit, so that it is part of the cache key.
  return _pallas_call(z, p, metric=metric, block_sizes=block_sizes, interpret=interpret,
                      backend=jax.default_backend())


@functools.partial(jax.jit, static_argnames=("metric", "block_sizes", "interpret", "backend"))
def _pallas_call(z, p, *, metric, block_sizes, interpret, backend):
  _check_inputs(z, p, metric)
  if block_sizes is None:
    block_sizes = BlockSizes.for_backend(backend)
  n, hw, d = z.shape
  num_p = p.shape[0]
  bn, bp = block_sizes.block_n, block_sizes.block_p
  hwp = _padded_hw(hw, block_sizes.hw_multiple)
  n_pad, p_pad = _round_up(n, bn), _round_up(num_p, bp)
  zp = jnp.pad(z, ((0, n_pad - n), (0, hwp - hw), (0, 0)))
  pp = jnp.pad(p, ((0, p_pad - num_p), (0, 0)))
  kernel = functools.partial(_min_distance_kernel, metric=metric, hw=hw)
  # The body uses array-level jnp (dot_general on values), which Pallas lowers through
  # Triton, not Mosaic GPU (that needs wgmma on shared-memory refs): Triton explicitly on GPU.
  compiler_params = portable_compiler_params(backend, interpret)
  dist, idx = pl.pallas_call(
      kernel,
      grid=(n_pad // bn, p_pad // bp),
      in_specs=[pl.BlockSpec((bn, hwp, d), lambda i, j: (i, 0, 0)),
                pl.BlockSpec((bp, d), lambda i, j: (j, 0))],
      out_specs=[pl.BlockSpec((bn, bp), lambda i, j: (i, j)),
                 pl.BlockSpec((bn, bp), lambda i, j: (i, j))],
      out_shape=[jax.ShapeDtypeStruct((n_pad, p_pad), jnp.float32),
                 jax.ShapeDtypeStruct((n_pad, p_pad), jnp.int32)],
      interpret=interpret,
      compiler_params=compiler_params,
      name="prototype_min_distance",
  )(zp, pp)
  return dist[:n, :num_p], idx[:n, :num_p]


# ----------------------------------------------------------------------------- custom_vjp


def _backward(metric, z, p, dist, idx, g):
  """Cotangents of (z, p) given the cotangent g [N, P] of the min distances."""
  hw = z.shape[1]
  g = g.astype(jnp.float32)
  if metric == "l2":
    g = jnp.where(dist > 0, g, 0.0)  # relu clamped the min to 0: no gradient (as in XLA)
  # w[n, hw, j] = g[n, j] where hw is the argmin of (n, j).
  w = jax.nn.one_hot(idx, hw, axis=1, dtype=jnp.float32) * g[:, None, :]
  z32, p32 = z.astype(jnp.float32), p.astype(jnp.float32)
  wp = jnp.einsum("nhj,jd->nhd", w, p32)
  wz = jnp.einsum("nhj,nhd->jd", w, z32)
  if metric == "l2":
    dz = 2.0 * (jnp.sum(w, axis=2)[..., None] * z32 - wp)
    dp = 2.0 * (jnp.sum(g, axis=0)[:, None] * p32 - wz)
  else:
    dz, dp = -wp, -wz
  return dz.astype(z.dtype), dp.astype(p.dtype)


@functools.partial(jax.jit, static_argnames=("metric", "interpret"))
def _mosaic_gpu_forward(z, p, *, metric, interpret):
  return _mosaic_gpu_call(z, p, metric=metric, block_p=128, interpret=interpret)


def _kernel_forward(z, p, metric, backend, block_sizes, interpret):
  if backend == "mosaic_gpu":
    return _mosaic_gpu_forward(z, p, metric=metric, interpret=interpret)
  return prototype_min_distance_pallas(z, p, metric=metric, block_sizes=block_sizes,
                                       interpret=interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _min_distance_with_grad(z, p, metric, backend, block_sizes, interpret):
  return _kernel_forward(z, p, metric, backend, block_sizes, interpret)


def _fwd(z, p, metric, backend, block_sizes, interpret):
  dist, idx = _kernel_forward(z, p, metric, backend, block_sizes, interpret)
  return (dist, idx), (z, p, dist, idx)


def _bwd(metric, backend, block_sizes, interpret, res, cts):
  del backend, block_sizes, interpret  # one backward for both kernels (needs only argmin)
  z, p, dist, idx = res
  g, _ = cts  # the argmin output is integer-valued: its cotangent is ignored
  return _backward(metric, z, p, dist, idx, g)


_min_distance_with_grad.defvjp(_fwd, _bwd)


def prototype_min_distance_kernel(z, p, *, metric: Metric = "l2",
                                  block_sizes: BlockSizes | None = None,
                                  interpret: bool = False):
  """The Pallas kernel with its custom VJP: (min_distance [N, P], argmin [N, P])."""
  _check_inputs(z, p, metric)
  return _min_distance_with_grad(z, p, metric, "pallas", block_sizes, interpret)


# ----------------------------------------------------------------------------- reference


def prototype_distance_map(z, p, *, metric: Metric = "l2"):
  """The full distance map d(z[n, hw], p[j]): [N, HW, P] float32, in plain jnp."""
  _check_inputs(z, p, metric)
  # One 2-D matmul on CPU: the einsum's prototype gradient, a contraction over (n, h), would
  # transpose the cotangent (jaxdl.layers.dense).
  s = dense.dot_general(z, p.T, (((2,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  if metric == "dot":
    return -s
  z32, p32 = z.astype(jnp.float32), p.astype(jnp.float32)
  zz = jnp.sum(z32 * z32, axis=-1, keepdims=True)
  pp = jnp.sum(p32 * p32, axis=-1)
  return jax.nn.relu(zz - 2.0 * s + pp)


def prototype_min_distance_reference(z, p, *, metric: Metric = "l2"):
  """XLA reference: (min over HW of the distance map [N, P], argmin [N, P] int32)."""
  dist = prototype_distance_map(z, p, metric=metric)
  return jnp.min(dist, axis=1), jnp.argmin(dist, axis=1).astype(jnp.int32)


# ----------------------------------------------------------------------------- dispatcher

IMPLS = ("auto", "pallas", "mosaic_gpu", "xla")


def prototype_min_distance(z, p, *, metric: Metric = "l2", impl: str = "auto",
                           interpret: bool = False):
  """Global min over positions of prototype distances, differentiable in z and p.

  Args:
    z: [N, HW, D] features (spatial positions flattened row-major).
    p: [P, D] prototypes.
    metric: "l2" (squared Euclidean, clamped at 0) or "dot" (minus the inner product).
    impl: "pallas" (the portable kernel), "mosaic_gpu" (the Hopper kernel: bf16/f16 inputs,
      D a multiple of 64 up to 256; `interpret=True` runs it in Mosaic GPU interpret mode on
      CPU; not yet timed on a GPU), "xla" (the reference) or "auto": the portable kernel on TPU, the
      reference on CPU and GPU (on an H100 the Triton-lowered kernel took 1.60 ms forward +
      backward against XLA's 0.58 ms, BENCHMARKS.md), unless `interpret` asks for the kernel
      in interpret mode.
  Returns:
    (min_distance [N, P] float32, argmin [N, P] int32 index into HW).
  """
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if impl == "auto":
    impl = "pallas" if (interpret or jax.default_backend() == "tpu") else "xla"
  if impl == "xla":
    return prototype_min_distance_reference(z, p, metric=metric)
  if impl == "mosaic_gpu":
    _check_inputs(z, p, metric)
    if z.dtype != p.dtype or not mosaic_gpu_supported(z.shape, z.dtype):
      raise ValueError(
          f"the Mosaic GPU prototype kernel needs bf16/f16 features and prototypes of one "
          f"dtype and a prototype dim that is a multiple of 64 (<= 256); got {z.dtype} / "
          f"{p.dtype}, dim {z.shape[-1]}; use impl='xla'")
    return _min_distance_with_grad(z, p, metric, "mosaic_gpu", None, interpret)
  return prototype_min_distance_kernel(z, p, metric=metric, interpret=interpret)


# ----------------------------------------------------------------------------- benchmark


if __name__ == "__main__":
  # Forward + backward of the prototype layer, kernel vs XLA (full bench: tools/bench_prototype.py).
  import time
  key = jax.random.key(0)
  for hw in (49, 196):
    z = jax.random.uniform(key, (80, hw, 128))
    p = jax.random.uniform(jax.random.key(1), (2000, 128))
    interpret = jax.default_backend() == "cpu"
    for impl in ("xla", "pallas"):
      f = jax.jit(jax.grad(lambda z, p: prototype_min_distance(
          z, p, impl=impl, interpret=interpret)[0].sum(), argnums=(0, 1)))
      jax.block_until_ready(f(z, p))
      t = time.perf_counter()
      jax.block_until_ready(f(z, p))
      print(f"hw={hw} {impl}: {1e3 * (time.perf_counter() - t):.1f} ms")
