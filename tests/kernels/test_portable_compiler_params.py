"""The portable Pallas kernels ask for Triton on a GPU.

jax 0.10's Pallas lowers a `pallas_call` without compiler params through Mosaic GPU on GPUs
(`jax_pallas_use_mosaic_gpu`), which these kernels are not written for: the context
attention then needed 276 KiB of shared memory of an H200's 227 KiB and the portable dense
bottleneck did not lower (tools/gpu_aot.py --kernels-only, a deviceless compile for an
H200). Lowering for a GPU needs jax's CUDA plugin, so this traces each kernel's forward for
the "gpu" platform on CPU and reads the compiler params its `pallas_call` carries.
"""

import jax
import jax.numpy as jnp
import pytest

from jaxdl.kernels import portable_compiler_params


def _pallas_params(closed_jaxpr):
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "pallas_call":
        found.append(eqn.params["compiler_params"])
      for v in eqn.params.values():
        inner = getattr(v, "jaxpr", None)
        if inner is not None:
          walk(getattr(inner, "jaxpr", inner))
  walk(closed_jaxpr.jaxpr)
  return found


def test_triton_params_on_gpu_only():
  from jax.experimental.pallas import triton as pltriton
  assert isinstance(portable_compiler_params("gpu", False), pltriton.CompilerParams)
  assert portable_compiler_params("gpu", True) is None      # interpret mode
  assert portable_compiler_params("tpu", False) is None
  assert portable_compiler_params("cpu", False) is None


def _traced(name):
  from jaxdl.kernels import attention as at
  from jaxdl.kernels import dense_bottleneck as db
  from jaxdl.kernels import prototype_distance as pd
  if name == "attention":
    q = jnp.zeros((2, 128, 2, 64), jnp.bfloat16)
    nc = jnp.array([3, 5], jnp.int32)
    return jax.make_jaxpr(lambda q: at._forward(
        q, q, q, nc, block_sizes=at.BlockSizes(), interpret=False, backend="gpu"))(q)
  if name == "dense_bottleneck":
    xs = (jnp.zeros((2, 8, 8, 64), jnp.bfloat16), jnp.zeros((2, 8, 8, 32), jnp.bfloat16))
    s, w = jnp.ones(96), jnp.zeros((96, 128), jnp.bfloat16)
    return jax.make_jaxpr(lambda xs: db._forward(
        xs, s, s, w, backend="portable", block_sizes=db.BlockSizes(), interpret=False,
        out_dtype=jnp.bfloat16, platform="gpu"))(xs)
  z, p = jnp.zeros((4, 49, 128), jnp.bfloat16), jnp.zeros((16, 128), jnp.bfloat16)
  return jax.make_jaxpr(lambda z: pd._pallas_call(
      z, p, metric="l2", block_sizes=None, interpret=False, backend="gpu"))(z)


@pytest.mark.parametrize("name", ["attention", "dense_bottleneck", "prototype"])
def test_portable_kernels_carry_triton_params_for_gpu(name):
  from jax.experimental.pallas import triton as pltriton
  params = _pallas_params(_traced(name))
  assert params and all(isinstance(p, pltriton.CompilerParams) for p in params), params
