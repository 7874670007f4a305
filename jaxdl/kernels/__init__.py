"""jaxdl.kernels."""


def portable_compiler_params(backend: str, interpret: bool, num_warps: int = 4,
                             num_stages: int = 2):
  """`compiler_params` for a portable `pl.pallas_call` (BlockSpecs, array-level jnp body).

  On a GPU: Triton's, explicitly. jax 0.10's Pallas lowers a `pallas_call` without
  compiler params through Mosaic GPU by default (`jax_pallas_use_mosaic_gpu`), which these
  kernels are not written for (the context attention asked for 276 KiB of shared memory of
  an H200's 227 KiB; tools/gpu_aot.py --kernels-only). Elsewhere (TPU, interpret mode) None.
  `backend` is `jax.default_backend()`, resolved outside jit so that it keys the cache.
  """
  if interpret or backend != "gpu":
    return None
  from jax.experimental.pallas import triton as pltriton
  return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
