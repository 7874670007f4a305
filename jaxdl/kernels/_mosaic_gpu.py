"""Shared helpers for the Mosaic GPU (Pallas:MGPU, Hopper) paths of jaxdl's kernels.

Testing without a GPU. jax 0.10 ships a GPU interpret mode for Mosaic GPU kernels
(`jax._src.pallas.mosaic_gpu.interpret.params.InterpretGPUParams`, not yet exported under
`jax.experimental`): passing an instance as `interpret=` to `plgpu.kernel` runs the kernel on
CPU and simulates GMEM/SMEM, TMA copies, barriers and `wgmma` (checked in jax 0.10.2). It does
NOT support (i) `pallas_call` with non-trivial BlockSpecs (only kernels that copy their own
tiles, e.g. `plgpu.kernel` + `plgpu.emit_pipeline`), (ii) `plgpu.load` with a layout and
`plgpu.layout_cast`, and (iii) scoped register (ACC) allocations mixed with SMEM scratch in
one `run_scoped`. jaxdl's Mosaic GPU kernels are written within these limits: they use
`plgpu.kernel` + `emit_pipeline`, allocate the accumulator in its own `pl.run_scoped`, and
apply layout casts (pure register-layout hints, no effect on values) only when compiling
(`layout_cast` below). Their real lowering is checked without a device by
`jax.export(..., platforms=["cuda"])`, which runs the Mosaic GPU compiler pipeline to MLIR.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp


@functools.cache
def interpret_params():
  """The GPU interpret-mode parameters object, or a clear error if this jax lacks it."""
  try:
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
  except ImportError as e:  # pragma: no cover - depends on the jax version
    raise NotImplementedError(
        "this jax has no Mosaic GPU interpret mode (needs jax >= 0.10); test the kernel on "
        "a Hopper GPU or use impl='xla'") from e
  return InterpretGPUParams()


def layout_cast(x, layout, interpret: bool):
  """`plgpu.layout_cast` when compiling; identity in interpret mode (which lacks it)."""
  if interpret:
    return x
  from jax.experimental.pallas import mosaic_gpu as plgpu
  return plgpu.layout_cast(x, layout)


def swizzle_transforms(cols, dtype):
  """(tiling, swizzle) transforms for SMEM tiles whose minor dimensions have `cols` elements.

  wgmma operands in SMEM must be tiled (8, swizzle / itemsize) and swizzled, with the same
  swizzle for both operands; it is the largest of 128, 64, 32 bytes that divides a row of
  every tile (`cols` an int or a sequence of ints).
  """
  from jax.experimental.pallas import mosaic_gpu as plgpu
  itemsize = jnp.dtype(dtype).itemsize
  cols = (cols,) if isinstance(cols, int) else tuple(cols)
  for sw in (128, 64, 32):
    if all((c * itemsize) % sw == 0 for c in cols):
      return (plgpu.TilingTransform((8, sw // itemsize)), plgpu.SwizzleTransform(sw))
  raise ValueError(f"a {cols}-column {jnp.dtype(dtype).name} tile is not a multiple of 32 "
                   "bytes per row; wgmma needs 16 bf16 columns at least")


def mosaic_gpu_tile_ok(cols: int, dtype) -> bool:
  """Whether a tile with `cols` minor elements can be a wgmma operand (see above)."""
  return (cols * jnp.dtype(dtype).itemsize) % 32 == 0
