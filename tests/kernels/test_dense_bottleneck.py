"""Dense bottleneck kernel (jaxdl/kernels/dense_bottleneck.py) in interpret mode on CPU.

The portable Pallas kernel runs in Pallas' generic interpret mode, the Mosaic GPU kernel in
Mosaic GPU interpret mode; both are compared with a float64 reference (numpy for values,
autodiff of the concatenating jnp reference under x64 for gradients).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.kernels import dense_bottleneck as db

U_BF16 = 2.0 ** -8
U_F32 = 2.0 ** -24


def _problem(sizes, lead, c_out, dtype, seed=0):
  key = jax.random.key(seed)
  ks = jax.random.split(key, len(sizes) + 3)
  xs = tuple(jax.random.normal(ks[i], lead + (c,), jnp.float32).astype(dtype)
             for i, c in enumerate(sizes))
  c = sum(sizes)
  scale = jax.random.normal(ks[-3], (c,))  # negative scales too: ReLU cuts both ways
  shift = 0.5 * jax.random.normal(ks[-2], (c,))
  kernel = (jax.random.normal(ks[-1], (1, 1, c, c_out)) / np.sqrt(c)).astype(dtype)
  return xs, scale, shift, kernel


def _numpy_reference(xs, scale, shift, kernel, round_to=None):
  """float64: relu(concat * s + b) @ W (operand optionally rounded as the kernel does)."""
  x = np.concatenate([np.asarray(v, np.float64) for v in xs], axis=-1)
  a = np.maximum(x * np.asarray(scale, np.float64) + np.asarray(shift, np.float64), 0.0)
  if round_to is not None:
    a = np.asarray(jnp.asarray(a, jnp.float32).astype(round_to), np.float64)
  w = np.asarray(kernel, np.float64).reshape(x.shape[-1], -1)
  return a @ w, np.abs(a) @ np.abs(w)


def _loss_weights(shape):
  return jax.random.normal(jax.random.key(7), shape)


def _grads(fn, xs, scale, shift, kernel, r):
  return jax.grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * r),
                  argnums=(0, 1, 2, 3))(xs, scale, shift, kernel)


def _grads_f64(xs, scale, shift, kernel, r):
  with jax.enable_x64(True):
    cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, np.float64)), t)
    g = _grads(lambda *a: db.dense_bottleneck_reference(*a), *cast((xs, scale, shift, kernel)),
               jnp.asarray(np.asarray(r, np.float64)))
    return jax.tree_util.tree_map(np.asarray, g)


@pytest.fixture(scope="module")
def portable_case():
  # Odd channel counts and 18 positions (padded to a 64-row tile), 2 output tiles.
  xs, scale, shift, kernel = _problem((5, 3), (2, 3, 3), 12, jnp.float32)
  blocks = db.BlockSizes(block_m=64, block_n=8)
  fn = lambda *a: db.dense_bottleneck(*a, impl="pallas", interpret=True, block_sizes=blocks)
  r = _loss_weights((2, 3, 3, 12))
  y, vjp = jax.vjp(fn, xs, scale, shift, kernel)
  return (xs, scale, shift, kernel), r, y, vjp(r)


def test_portable_kernel_values_match_float64(portable_case):
  args, _, y, _ = portable_case
  want, mag = _numpy_reference(*args)
  assert y.shape == (2, 3, 3, 12) and y.dtype == jnp.float32
  # float32 accumulation of 8 products: error <= K * u32 * sum|a w| (plus the roundings
  # of x * s + b), so 4 K u32 |a||w| bounds it.
  np.testing.assert_array_less(np.abs(np.asarray(y, np.float64) - want), 4 * 8 * U_F32 * mag
                               + 1e-30)
  np.testing.assert_allclose(y, db.dense_bottleneck_reference(*args), rtol=1e-5, atol=1e-6)


def test_portable_kernel_gradients_match_float64_autodiff(portable_case):
  args, r, _, grads = portable_case
  want = _grads_f64(*args, r)
  flat_got = jax.tree_util.tree_leaves(grads)
  flat_want = jax.tree_util.tree_leaves(want)
  assert len(flat_got) == len(flat_want) == 5  # two inputs, scale, shift, kernel
  for got, ref in zip(flat_got, flat_want):
    assert got.shape == ref.shape
    np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=1e-4,
                               atol=1e-5 * np.abs(ref).max())
  # And the float32 autodiff of the concatenating reference agrees.
  ref32 = _grads(lambda *a: db.dense_bottleneck_reference(*a), *args, r)
  for got, ref in zip(flat_got, jax.tree_util.tree_leaves(ref32)):
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_mosaic_gpu_kernel_in_interpret_mode():
  # bf16 (what the Mosaic GPU kernel takes): two inputs of 32 channels, 64 positions (one
  # row tile), 16 output channels; float32 output.
  xs, scale, shift, kernel = _problem((32, 32), (1, 8, 8), 16, jnp.bfloat16, seed=1)
  fn = lambda *a: db.dense_bottleneck(*a, impl="mosaic_gpu", interpret=True,
                                      out_dtype=jnp.float32)
  r = _loss_weights((1, 8, 8, 16))
  y, vjp = jax.vjp(fn, xs, scale, shift, kernel)
  want, mag = _numpy_reference(xs, scale, shift, kernel)
  # The kernel rounds relu(x s + b) to bf16 before wgmma (relative error <= u_bf16 per
  # operand), then accumulates 64 products in float32.
  bound = (U_BF16 + 64 * U_F32) * mag * 1.01 + 1e-30
  np.testing.assert_array_less(np.abs(np.asarray(y, np.float64) - want), bound)
  assert float(np.abs(np.asarray(y) - want).max()) > 0  # it really ran in bf16
  # Gradients: the custom VJP against float64 autodiff of the reference on the same
  # (bf16-valued) inputs; the backward matmuls take bf16 operands, so bf16 tolerances.
  got = jax.tree_util.tree_leaves(vjp(r.astype(jnp.float32)))
  ref = jax.tree_util.tree_leaves(_grads_f64(xs, scale, shift, kernel, r))
  for g, w in zip(got, ref):
    err = np.abs(np.asarray(g, np.float64) - w).max()
    assert err <= 4 * U_BF16 * np.abs(w).max(), (g.shape, err, np.abs(w).max())


def test_mosaic_gpu_kernel_lowers_for_cuda():
  # The real Mosaic GPU lowering (TMA, swizzled SMEM, wgmma) runs without a device.
  xs, scale, shift, kernel = _problem((64, 32), (2, 8, 8), 48, jnp.bfloat16)
  fn = jax.jit(lambda xs, w: db.dense_bottleneck(xs, scale, shift, w, impl="mosaic_gpu"))
  exported = jax.export.export(fn, platforms=["cuda"])(xs, kernel)
  text = exported.mlir_module()
  assert "mosaic_gpu" in text.lower()


def test_auto_on_cpu_is_the_reference_and_errors_are_readable():
  xs, scale, shift, kernel = _problem((4, 4), (2, 2), 3, jnp.float32)
  np.testing.assert_array_equal(db.dense_bottleneck(xs, scale, shift, kernel),
                                db.dense_bottleneck_reference(xs, scale, shift, kernel))
  with pytest.raises(ValueError, match="impl must be one of"):
    db.dense_bottleneck(xs, scale, shift, kernel, impl="cuda")
  with pytest.raises(ValueError, match="scale and shift must have shape"):
    db.dense_bottleneck(xs, scale[:-1], shift, kernel)
  with pytest.raises(ValueError, match="leading dims"):
    db.dense_bottleneck((xs[0], xs[1][:1]), scale, shift, kernel)
  with pytest.raises(ValueError, match="use impl='xla'"):  # f32 and 4 channels: not for wgmma
    db.dense_bottleneck(xs, scale, shift, kernel, impl="mosaic_gpu", interpret=True)
  with pytest.raises(ValueError, match="block_m"):
    db.BlockSizes(block_m=12)


def test_fold_batch_norm_and_batch_moments():
  xs, _, _, _ = _problem((3, 2), (4, 5), 1, jnp.float32)
  x = np.concatenate([np.asarray(v, np.float64) for v in xs], -1).reshape(-1, 5)
  gamma, beta = jnp.arange(1.0, 6.0), jnp.arange(5.0) - 2

  @jax.jit
  def fold(xs):
    mean, var = db.batch_moments(xs)
    return (mean, var) + db.fold_batch_norm(gamma, beta, mean, var)

  mean, var, scale, shift = fold(xs)
  np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(var, x.var(0), rtol=1e-5)
  want = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) * np.asarray(gamma) + np.asarray(beta)
  np.testing.assert_allclose(x * np.asarray(scale) + np.asarray(shift), want, rtol=1e-4,
                             atol=1e-5)
