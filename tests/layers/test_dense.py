"""Dense contractions as 2-D matmuls: float64 values and gradients, no transpose on CPU."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import errors
from jaxdl.layers import dense as ld
from jaxdl.layers.conv import conv_impl

CASES = [
    # (name, lhs shape, rhs shape, dimension numbers, the same product as an einsum)
    ("3-D input, last axis", (3, 5, 4), (4, 6), (((2,), (0,)), ((), ())), "abk,kf->abf"),
    ("4-D input, last axis", (2, 3, 5, 4), (4, 7), (((3,), (0,)), ((), ())), "abck,kf->abcf"),
    ("two contracting axes (DenseGeneral out)", (2, 5, 3, 4), (3, 4, 6),
     (((2, 3), (0, 1)), ((), ())), "abkl,klf->abf"),
    ("feature axes on the output (DenseGeneral qkv)", (2, 5, 4), (4, 3, 2, 2),
     (((2,), (0,)), ((), ())), "abk,kfgh->abfgh"),
    ("1-D input", (4,), (4, 3), (((0,), (0,)), ((), ())), "k,kf->f"),
    # passed through unchanged:
    ("batch axes (passed through)", (2, 5, 4), (2, 4, 3), (((2,), (1,)), ((0,), (0,))),
     "bik,bkj->bij"),
    ("leading contraction (passed through)", (4, 5, 3), (4, 6), (((0,), (0,)), ((), ())),
     "kab,kf->abf"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_float64_values_and_gradients(case):
  _, ls, rs, dn, spec = case
  rng = np.random.default_rng(0)
  lhs = rng.standard_normal(ls).astype(np.float32)
  rhs = rng.standard_normal(rs).astype(np.float32)
  ins, out_idx = spec.split("->")
  a_idx, b_idx = ins.split(",")
  l64, r64 = np.float64(lhs), np.float64(rhs)
  ref = np.einsum(spec, l64, r64)
  g = np.random.default_rng(1).standard_normal(ref.shape)
  # The product is bilinear: each gradient is the einsum of the cotangent with the other factor.
  ref_grads = (np.einsum(f"{out_idx},{b_idx}->{a_idx}", g, r64),
               np.einsum(f"{a_idx},{out_idx}->{b_idx}", l64, g))
  out, vjp = jax.vjp(lambda a, b: ld.dot_general(a, b, dn, impl="fast"), lhs, rhs)
  assert out.shape == ref.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  for got, want in zip(vjp(g.astype(np.float32)), ref_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU layout decision")
def test_kernel_gradient_needs_no_transpose_on_cpu():
  """The reason for the module: XLA:CPU transposes the cotangent of a 4-D dense dot.

  (At these sizes: XLA keeps small ones untransposed.) Compiled, never run.
  """
  x, w = jnp.ones((8, 56, 56, 64)), jnp.ones((64, 256))
  g, s = jnp.ones((8, 56, 56, 256)), jnp.ones(256)

  def hlo(impl):
    def step(x, w, g, s):  # a new function per impl: jit caches traces by function
      _, vjp = jax.vjp(lambda x, w: ld.dot_general(x, w, (((3,), (0,)), ((), ()))), x, w)
      return vjp(jnp.maximum(g * s + 1.0, 0.0))  # an elementwise producer (BatchNorm backward)

    with conv_impl(impl):
      return jax.jit(step).lower(x, w, g, s).compile().as_text()

  assert " transpose(" not in hlo("auto")
  if " transpose(" not in hlo("xla"):
    pytest.skip("this XLA no longer transposes the 4-D dot's cotangent: re-measure "
                "tools/bench_conv.py --dense and drop the flattening if it no longer pays")


def test_dense_layers_keep_flax_parameters_and_values():
  x = jax.random.normal(jax.random.key(0), (2, 3, 5))
  for ours, theirs, kw in [(ld.Dense, nn.Dense, dict(features=4)),
                           (ld.DenseGeneral, nn.DenseGeneral, dict(features=(2, 3), axis=(-2, -1)))]:
    v = theirs(**kw).init(jax.random.key(1), x)
    v2 = ours(**kw).init(jax.random.key(1), x)
    assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(v2)
    np.testing.assert_allclose(ours(**kw).apply(v, x), theirs(**kw).apply(v, x),
                               rtol=1e-5, atol=1e-6)


def test_bad_impl_is_a_config_error():
  with pytest.raises(errors.ConfigError, match="impl"):
    ld.dot_general(jnp.ones((2, 3)), jnp.ones((3, 4)), (((1,), (0,)), ((), ())), impl="gpu")
