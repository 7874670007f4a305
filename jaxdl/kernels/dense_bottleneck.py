"""DenseNet bottleneck: BN-ReLU-Conv1x1 over a list of feature maps, without concatenating.

Layer l of a DenseNet block (Huang et al. 2017, Sec. 3, DenseNet-B) computes
H_l([x_0, ..., x_{l-1}]) whose first step is BN-ReLU-Conv1x1 on the channel concatenation.
With BatchNorm written as a per-channel affine map (scale s, shift b; folded from the
running statistics in inference, from the batch statistics in training), the concatenation
never needs to exist:

  y = relu(concat_i(x_i) * s + b) @ W = sum_i relu(x_i * s_i + b_i) @ W_i

where x_i [M, C_i] are the earlier feature maps (M = N*H*W positions), s_i, b_i, W_i the
matching slices of s, b [C] and of the 1x1 kernel W [C, C_out]. XLA writes the concatenation
(layer l reads and writes C_0 + l*k channels: quadratic memory traffic in depth, the problem
of Pleiss et al. 2017 "Memory-Efficient Implementation of DenseNets" and of HarDNet, Chao et
al. 2019) and the normalized copy; the kernel reads each x_i tile once, normalizes it on
chip, and accumulates its matmul into one float32 accumulator.

Backward (custom VJP), per input, still without concatenating (pre_i = x_i s_i + b_i,
a_i = relu(pre_i), g = dL/dy):
  dW_i = a_i^T g      dpre_i = (g W_i^T) * [pre_i > 0]
  dx_i = dpre_i * s_i   ds_i = sum_m dpre_i * x_i   db_i = sum_m dpre_i
in plain jnp (XLA fuses the elementwise parts into the matmuls' epilogues).

Backends (file order STYLE.md, Kernels: block sizes, kernels, wrappers, custom_vjp,
reference, dispatcher, benchmark):
- Mosaic GPU (Hopper, what JAX recommends there): `plgpu.kernel` over (row tile, output
  tile); per input an `emit_pipeline` over its channel chunks copies x_i and W_i tiles to
  SMEM with TMA, applies scale/shift/ReLU in registers, stores the bf16 result to a swizzled
  SMEM tile and feeds it to `wgmma`. Tested on CPU in Mosaic GPU interpret mode (see
  jaxdl/kernels/_mosaic_gpu.py); its CUDA lowering is checked by `jax.export`. Needs bf16/f16
  inputs, M a multiple of block_m, every C_i a multiple of 32 (TMA copies of a channel
  chunk's float32 scale must be multiples of 128 bytes) and C_out a multiple of 16 (the
  dispatcher falls back to XLA otherwise, e.g. densenet_bc k=12; DenseNet-121, k=32, fits).
- Portable Pallas (grid + BlockSpec, jnp body): Pallas TPU (Mosaic TPU) and the generic
  interpret mode on CPU (the tests). "auto" does not pick it on GPU; `impl="pallas"` there
  lowers through Triton (`portable_compiler_params`: its dot needs Triton, not Mosaic GPU;
  compiled for an H200 by tools/gpu_aot.py --kernels-only, not yet run on one).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxdl.kernels import _mosaic_gpu as mgpu
from jaxdl.kernels import portable_compiler_params


# ----------------------------------------------------------------------------- block sizes


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes.

  Attributes:
    block_m: positions (rows) per program; M is padded to a multiple (portable kernel) or
      must be a multiple (Mosaic GPU: 64 = one warpgroup's wgmma M).
    block_n: output channels per program (None: all of C_out when it is <= 256).
    max_concurrent_steps: Mosaic GPU pipeline depth (TMA copies in flight).
  """
  block_m: int = 64
  block_n: int | None = None
  max_concurrent_steps: int = 2

  def __post_init__(self):
    if not isinstance(self.block_m, int) or self.block_m < 8 or self.block_m % 8:
      raise ValueError(f"BlockSizes.block_m must be a positive multiple of 8, got "
                       f"{self.block_m!r}")
    if self.block_n is not None and (not isinstance(self.block_n, int) or self.block_n < 1):
      raise ValueError(f"BlockSizes.block_n must be a positive int or None, got "
                       f"{self.block_n!r}")
    if self.max_concurrent_steps < 1:
      raise ValueError("BlockSizes.max_concurrent_steps must be >= 1")

  def out_block(self, c_out: int) -> int:
    if self.block_n is not None:
      return self.block_n
    return c_out if c_out <= 256 else 128


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


# ----------------------------------------------------------------------------- kernels


def _portable_kernel(*refs, num_inputs: int):
  """One program: a [block_m, C_i] tile of every input against W_i[:, block_n]."""
  xs = refs[:num_inputs]
  ss = refs[num_inputs:2 * num_inputs]
  bs = refs[2 * num_inputs:3 * num_inputs]
  ws = refs[3 * num_inputs:4 * num_inputs]
  o_ref = refs[4 * num_inputs]
  acc = jnp.zeros(o_ref.shape, jnp.float32)
  for x_ref, s_ref, b_ref, w_ref in zip(xs, ss, bs, ws):
    w = w_ref[...]
    a = jnp.maximum(x_ref[...].astype(jnp.float32) * s_ref[...] + b_ref[...], 0.0)
    acc = acc + jax.lax.dot_general(a.astype(w.dtype), w, (((1,), (0,)), ((), ())),
                                    preferred_element_type=jnp.float32)
  o_ref[...] = acc.astype(o_ref.dtype)


def _mosaic_gpu_call(xs, ss, bs, ws, out_dtype, block_sizes: BlockSizes, interpret: bool):
  """The Mosaic GPU kernel on [M, C_i] inputs (see the module docstring)."""
  from jax.experimental.pallas import mosaic_gpu as plgpu
  m = xs[0].shape[0]
  c_out = ws[0].shape[1]
  dt = xs[0].dtype
  tm, tn = block_sizes.block_m, block_sizes.out_block(c_out)
  # Channel chunks of 64 or 32: a chunk's float32 scale (tk * 4 bytes) must be a multiple
  # of 128 bytes for the TMA copy.
  chunks = [64 if c % 64 == 0 else 32 for c in (x.shape[1] for x in xs)]
  num_inputs = len(xs)
  wgmma = plgpu.Layout.WGMMA

  def kernel(*refs, o_smem, a_smem):
    ins, o_gmem = refs[:4 * num_inputs], refs[4 * num_inputs]
    pid_m = jax.lax.axis_index("m")
    pid_n = jax.lax.axis_index("n")

    def accumulate(acc):
      for i in range(num_inputs):
        x_g, s_g, b_g, w_g = ins[4 * i:4 * i + 4]
        tk = chunks[i]

        def body(_, x_smem, s_smem, b_smem, w_smem, i=i):
          x = mgpu.layout_cast(x_smem[...], wgmma, interpret).astype(jnp.float32)
          s = mgpu.layout_cast(s_smem[...], wgmma.reduce(0), interpret)
          b = mgpu.layout_cast(b_smem[...], wgmma.reduce(0), interpret)
          a = jnp.maximum(x * jax.lax.broadcast_in_dim(s, x.shape, [1])
                          + jax.lax.broadcast_in_dim(b, x.shape, [1]), 0.0)
          plgpu.wgmma_wait(0)  # the previous wgmma may still read a_smem[i]
          a_smem[i][...] = a.astype(dt)
          plgpu.commit_smem()
          plgpu.wgmma(acc, a_smem[i], w_smem)

        plgpu.emit_pipeline(
            body, grid=(xs[i].shape[1] // tk,),
            in_specs=[
                plgpu.BlockSpec((tm, tk), lambda k: (pid_m, k),
                                transforms=mgpu.swizzle_transforms((tk, tn), dt)),
                plgpu.BlockSpec((tk,), lambda k: (k,)),
                plgpu.BlockSpec((tk,), lambda k: (k,)),
                plgpu.BlockSpec((tk, tn), lambda k: (k, pid_n),
                                transforms=mgpu.swizzle_transforms((tk, tn), dt),
                                delay_release=1),
            ],
            max_concurrent_steps=block_sizes.max_concurrent_steps,
        )(x_g, s_g, b_g, w_g)
      plgpu.wgmma_wait(0)
      return acc[...]

    # The register accumulator gets its own scope (interpret mode cannot mix it with SMEM).
    y = pl.run_scoped(accumulate, plgpu.ACC((tm, tn), jnp.float32))
    o_smem[...] = y.astype(out_dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[pl.ds(pid_m * tm, tm), pl.ds(pid_n * tn, tn)])
    plgpu.wait_smem_to_gmem(0)

  call = plgpu.kernel(
      kernel,
      out_type=jax.ShapeDtypeStruct((m, c_out), out_dtype),
      scratch_types=dict(
          o_smem=plgpu.SMEM((tm, tn), out_dtype),
          a_smem=[plgpu.SMEM((tm, tk), dt, transforms=mgpu.swizzle_transforms((tk, tn), dt))
                  for tk in chunks]),
      grid=(m // tm, c_out // tn), grid_names=("m", "n"),
      interpret=mgpu.interpret_params() if interpret else None,
  )
  args = []
  for x, s, b, w in zip(xs, ss, bs, ws):
    args += [x, s.astype(jnp.float32), b.astype(jnp.float32), w.astype(dt)]
  return call(*args)


# ----------------------------------------------------------------------------- wrappers


def _split(v, sizes):
  out, start = [], 0
  for c in sizes:
    out.append(v[start:start + c])
    start += c
  return out


def _check_inputs(xs, scale, shift, kernel):
  if not xs:
    raise ValueError("dense_bottleneck needs at least one input feature map")
  lead = xs[0].shape[:-1]
  for x in xs:
    if x.shape[:-1] != lead:
      raise ValueError(f"all inputs must share their leading dims {lead}, got {x.shape}; "
                       "they are concatenated along the last (channel) axis")
  c = sum(x.shape[-1] for x in xs)
  if scale.shape != (c,) or shift.shape != (c,):
    raise ValueError(f"scale and shift must have shape ({c},) (the total input channels), "
                     f"got {scale.shape} and {shift.shape}")
  if kernel.ndim == 4:
    if kernel.shape[:2] != (1, 1):
      raise ValueError(f"kernel must be a 1x1 conv kernel [1, 1, C, C_out], got {kernel.shape}")
    kernel = kernel[0, 0]
  if kernel.ndim != 2 or kernel.shape[0] != c:
    raise ValueError(f"kernel must be [C, C_out] or [1, 1, C, C_out] with C = {c}, got "
                     f"{kernel.shape}")
  return kernel


def mosaic_gpu_supported(shapes: Sequence[tuple], c_out: int, dtype,
                         block_sizes: BlockSizes = BlockSizes()) -> bool:
  """Whether the Mosaic GPU kernel handles these input shapes (else use impl='xla')."""
  m = 1
  for d in shapes[0][:-1]:
    m *= d
  tn = block_sizes.out_block(c_out)
  return (jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
          and m % block_sizes.block_m == 0 and c_out % tn == 0 and tn % 8 == 0
          and tn <= 256 and mgpu.mosaic_gpu_tile_ok(tn, dtype)
          and all(s[-1] % 32 == 0 for s in shapes))


@functools.partial(jax.jit, static_argnames=("backend", "block_sizes", "interpret", "out_dtype",
                                             "platform"))
def _forward(xs, scale, shift, kernel, *, backend, block_sizes, interpret, out_dtype,
             platform):
  """Kernel forward on [..., C_i] inputs: [..., C_out] in `out_dtype`; `platform` is
  `jax.default_backend()` (the portable kernel's compiler params)."""
  kernel = _check_inputs(xs, scale, shift, kernel)
  lead = xs[0].shape[:-1]
  sizes = [x.shape[-1] for x in xs]
  flat = [x.reshape(-1, x.shape[-1]) for x in xs]
  m = flat[0].shape[0]
  c_out = kernel.shape[1]
  ss, bs, ws = _split(scale, sizes), _split(shift, sizes), _split(kernel, sizes)
  if backend == "mosaic_gpu":
    if not mosaic_gpu_supported([x.shape for x in xs], c_out, xs[0].dtype, block_sizes):
      raise ValueError(
          f"the Mosaic GPU dense bottleneck needs bf16/f16 inputs, positions a multiple of "
          f"{block_sizes.block_m} and input channels multiples of 32; got {xs[0].dtype} inputs "
          f"with channels {sizes} -> {c_out} and {m} positions; use impl='xla'")
    y = _mosaic_gpu_call(flat, ss, bs, ws, out_dtype, block_sizes, interpret)
    return y.reshape(*lead, c_out)
  tm = block_sizes.block_m
  tn = block_sizes.out_block(c_out)
  m_pad, n_pad = _round_up(m, tm), _round_up(c_out, tn)
  flat = [jnp.pad(x, ((0, m_pad - m), (0, 0))) for x in flat]
  ws = [jnp.pad(w, ((0, 0), (0, n_pad - c_out))) for w in ws]
  in_specs = ([pl.BlockSpec((tm, c), lambda i, j: (i, 0)) for c in sizes]
              + [pl.BlockSpec((1, c), lambda i, j: (0, 0)) for c in sizes] * 2
              + [pl.BlockSpec((c, tn), lambda i, j: (0, j)) for c in sizes])
  y = pl.pallas_call(
      functools.partial(_portable_kernel, num_inputs=len(xs)),
      grid=(m_pad // tm, n_pad // tn),
      in_specs=in_specs,
      out_specs=pl.BlockSpec((tm, tn), lambda i, j: (i, j)),
      out_shape=jax.ShapeDtypeStruct((m_pad, n_pad), out_dtype),
      interpret=interpret,
      compiler_params=portable_compiler_params(platform, interpret),
      name="dense_bottleneck",
  )(*flat, *[s[None].astype(jnp.float32) for s in ss],
    *[b[None].astype(jnp.float32) for b in bs], *ws)
  return y[:m, :c_out].reshape(*lead, c_out)


# ----------------------------------------------------------------------------- custom_vjp


def _backward(xs, scale, shift, kernel, g):
  """Cotangents (dxs, dscale, dshift, dkernel) for y = sum_i relu(x_i s_i + b_i) @ W_i."""
  w2 = kernel[0, 0] if kernel.ndim == 4 else kernel
  sizes = [x.shape[-1] for x in xs]
  g = g.reshape(-1, g.shape[-1]).astype(jnp.float32)
  dxs, dss, dbs, dws = [], [], [], []
  for x, s, b, w in zip(xs, _split(scale, sizes), _split(shift, sizes), _split(w2, sizes)):
    xf = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    pre = xf * s.astype(jnp.float32) + b.astype(jnp.float32)
    a = jnp.maximum(pre, 0.0).astype(w.dtype)  # the operand the forward matmul saw
    dws.append(jnp.dot(a.T, g.astype(w.dtype), preferred_element_type=jnp.float32))
    da = jnp.dot(g.astype(w.dtype), w.T, preferred_element_type=jnp.float32)
    dpre = jnp.where(pre > 0, da, 0.0)
    dxs.append((dpre * s.astype(jnp.float32)).astype(x.dtype).reshape(x.shape))
    dss.append(jnp.sum(dpre * xf, axis=0))
    dbs.append(jnp.sum(dpre, axis=0))
  dkernel = jnp.concatenate(dws, axis=0).astype(kernel.dtype).reshape(kernel.shape)
  return (tuple(dxs), jnp.concatenate(dss).astype(scale.dtype),
          jnp.concatenate(dbs).astype(shift.dtype), dkernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _with_grad(xs, scale, shift, kernel, backend, block_sizes, interpret, out_dtype, platform):
  return _forward(xs, scale, shift, kernel, backend=backend, block_sizes=block_sizes,
                  interpret=interpret, out_dtype=out_dtype, platform=platform)


def _fwd(xs, scale, shift, kernel, backend, block_sizes, interpret, out_dtype, platform):
  y = _forward(xs, scale, shift, kernel, backend=backend, block_sizes=block_sizes,
               interpret=interpret, out_dtype=out_dtype, platform=platform)
  return y, (xs, scale, shift, kernel)


def _bwd(backend, block_sizes, interpret, out_dtype, platform, res, g):
  del backend, block_sizes, interpret, out_dtype, platform
  return _backward(*res, g)


_with_grad.defvjp(_fwd, _bwd)


# ----------------------------------------------------------------------------- reference


def dense_bottleneck_reference(xs, scale, shift, kernel, *, out_dtype=None):
  """XLA reference: relu(concat(xs) * scale + shift) @ kernel, concatenation materialized.

  xs: sequence of [..., C_i]; scale, shift: [C] (C = sum C_i); kernel: [C, C_out] or
  [1, 1, C, C_out]. The matmul runs in the inputs' dtype with float32 accumulation.
  Returns [..., C_out] in `out_dtype` (default: the inputs' dtype).
  """
  xs = tuple(xs)
  kernel = _check_inputs(xs, scale, shift, kernel)
  x = jnp.concatenate(xs, axis=-1) if len(xs) > 1 else xs[0]
  a = jnp.maximum(x.astype(jnp.float32) * scale.astype(jnp.float32)
                  + shift.astype(jnp.float32), 0.0)
  y = jnp.einsum("...c,cd->...d", a.astype(kernel.dtype), kernel,
                 preferred_element_type=jnp.float32)
  return y.astype(out_dtype or xs[0].dtype)


def fold_batch_norm(gamma, beta, mean, var, epsilon: float = 1e-5):
  """BatchNorm as a per-channel affine map: (scale, shift) with BN(x) = x * scale + shift."""
  scale = gamma * jax.lax.rsqrt(var + epsilon)
  return scale, beta - mean * scale


def batch_moments(xs):
  """Per-channel batch mean and (biased, two-pass) variance of concat(xs), input by input."""
  means, vars_ = [], []
  for x in xs:
    xf = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mu = xf.mean(axis=axes)
    means.append(mu)
    vars_.append(jnp.square(xf - mu).mean(axis=axes))
  return jnp.concatenate(means), jnp.concatenate(vars_)


# ----------------------------------------------------------------------------- dispatcher

IMPLS = ("auto", "pallas", "mosaic_gpu", "xla")


def dense_bottleneck(xs: Sequence[jax.Array], scale, shift, kernel, *, impl: str = "auto",
                     block_sizes: BlockSizes | None = None, interpret: bool = False,
                     out_dtype=None):
  """relu(concat(xs) * scale + shift) @ kernel without materializing the concatenation.

  Args:
    xs: the feature maps [..., C_i] (same leading dims, e.g. [N, H, W]).
    scale, shift: [C] per-channel affine map of the concatenated channels (BatchNorm folded
      with `fold_batch_norm`, from running or batch statistics).
    kernel: [C, C_out] or the 1x1 conv kernel [1, 1, C, C_out].
    impl: "xla" (the reference), "pallas" (the portable Pallas kernel: TPU, or the generic
      interpret mode with `interpret=True`), "mosaic_gpu" (the Hopper kernel; on CPU with
      `interpret=True` it runs in Mosaic GPU interpret mode), or "auto": Mosaic GPU on a GPU
      when the shapes allow it, the portable kernel on TPU, XLA otherwise (CPU).
    out_dtype: output dtype (default: the inputs' dtype). Accumulation is float32.
  Returns:
    [..., C_out], differentiable in xs, scale, shift and kernel.
  """
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  xs = tuple(xs)
  kernel2 = _check_inputs(xs, scale, shift, kernel)
  out_dtype = jnp.dtype(out_dtype or xs[0].dtype)
  block_sizes = block_sizes or BlockSizes()
  if impl == "auto":
    backend = jax.default_backend()
    if backend == "gpu" and mosaic_gpu_supported([x.shape for x in xs], kernel2.shape[1],
                                                 xs[0].dtype, block_sizes):
      impl = "mosaic_gpu"
    elif backend == "tpu":
      impl = "pallas"
    else:
      impl = "xla"
  if impl == "xla":
    return dense_bottleneck_reference(xs, scale, shift, kernel, out_dtype=out_dtype)
  backend = "mosaic_gpu" if impl == "mosaic_gpu" else "portable"
  return _with_grad(xs, scale, shift, kernel, backend, block_sizes, interpret, out_dtype,
                    jax.default_backend())


# ----------------------------------------------------------------------------- benchmark


if __name__ == "__main__":
  # DenseNet-121 block 1, last layer (6 inputs: 64 + 5*32 channels -> 128), batch 64 at 56x56,
  # forward + backward; full comparison in tools/bench_gpu.py.
  import time
  key = jax.random.key(0)
  interpret = jax.default_backend() == "cpu"
  n, hw = (2, 8) if interpret else (64, 56)
  sizes = [64] + [32] * 5
  xs = [jax.random.normal(jax.random.fold_in(key, i), (n, hw, hw, c), jnp.bfloat16)
        for i, c in enumerate(sizes)]
  scale = jnp.ones(sum(sizes))
  shift = jnp.zeros(sum(sizes))
  w = jax.random.normal(key, (sum(sizes), 128), jnp.bfloat16)
  for impl in ("xla", "auto"):
    f = jax.jit(jax.grad(lambda xs, w: dense_bottleneck(
        xs, scale, shift, w, impl=impl).astype(jnp.float32).sum(), argnums=(0, 1)))
    jax.block_until_ready(f(xs, w))
    t = time.perf_counter()
    for _ in range(10):
      out = f(xs, w)
    jax.block_until_ready(out)
    print(f"{impl}: {1e3 * (time.perf_counter() - t) / 10:.2f} ms")
