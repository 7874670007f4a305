"""Prototype distance + min-pool kernel: interpret mode on CPU against a brute-force loop
and the jnp reference (values, argmin, gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.kernels import prototype_distance as pd


def brute_force(z, p, metric):
  """float64 double loop over images, positions and prototypes."""
  z, p = np.asarray(z, np.float64), np.asarray(p, np.float64)
  n, hw, _ = z.shape
  dist = np.full((n, p.shape[0]), np.inf)
  arg = np.zeros((n, p.shape[0]), np.int64)
  for i in range(n):
    for j in range(p.shape[0]):
      for h in range(hw):
        d = np.sum((z[i, h] - p[j]) ** 2) if metric == "l2" else -np.dot(z[i, h], p[j])
        if d < dist[i, j]:
          dist[i, j], arg[i, j] = d, h
  return dist, arg


@pytest.mark.parametrize("metric", ["l2", "dot"])
@pytest.mark.parametrize("shape", [(3, 7, 5, 4), (5, 13, 8, 11)])  # n, hw, d, p: all padded
def test_kernel_equals_brute_force(metric, shape):
  n, hw, d, num_p = shape
  kz, kp = jax.random.split(jax.random.key(hash((metric, shape)) % 2**31))
  z = jax.random.normal(kz, (n, hw, d))
  p = jax.random.normal(kp, (num_p, d))
  dist, arg = pd.prototype_min_distance_pallas(
      z, p, metric=metric, block_sizes=pd.BlockSizes(block_n=2, block_p=4, hw_multiple=8),
      interpret=True)
  want_d, want_a = brute_force(z, p, metric)
  np.testing.assert_allclose(dist, want_d, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(arg, want_a)


def test_default_blocks_and_power_of_two_padding():
  z = jax.random.uniform(jax.random.key(1), (9, 49, 16))
  p = jax.random.uniform(jax.random.key(2), (20, 16))
  want = pd.prototype_min_distance_reference(z, p)
  for bs in (pd.BlockSizes(), pd.BlockSizes.for_backend("gpu")):
    got = pd.prototype_min_distance_pallas(z, p, block_sizes=bs, interpret=True)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("metric", ["l2", "dot"])
def test_gradients_match_reference(metric):
  kz, kp, kg = jax.random.split(jax.random.key(7), 3)
  z = jax.random.normal(kz, (4, 10, 6))
  p = jax.random.normal(kp, (6, 6))
  g = jax.random.normal(kg, (4, 6))

  def loss(impl):
    return lambda z, p: jnp.sum(g * pd.prototype_min_distance(
        z, p, metric=metric, impl=impl, interpret=True)[0])

  got = jax.grad(loss("pallas"), argnums=(0, 1))(z, p)
  want = jax.grad(loss("xla"), argnums=(0, 1))(z, p)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_gradient_zero_where_relu_clamps():
  # A prototype equal to a feature vector: its min distance is 0 (clamped) -> no gradient,
  # as XLA's relu gives.
  z = jax.random.normal(jax.random.key(3), (1, 5, 4))
  p = jnp.concatenate([z[0, 2:3], jnp.ones((1, 4)) * 5.0])
  f = lambda impl: jax.grad(lambda p: pd.prototype_min_distance(
      z, p, impl=impl, interpret=True)[0].sum())(p)
  got, want = f("pallas"), f("xla")
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(got[0], 0.0, atol=1e-6)


def test_bfloat16_inputs_accumulate_in_float32():
  z = jax.random.uniform(jax.random.key(4), (2, 9, 32)).astype(jnp.bfloat16)
  p = jax.random.uniform(jax.random.key(5), (8, 32)).astype(jnp.bfloat16)
  got, _ = pd.prototype_min_distance(z, p, impl="pallas", interpret=True)
  want, _ = brute_force(np.asarray(z, np.float32), np.asarray(p, np.float32), "l2")
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)


def test_distance_map_matches_min():
  z = jax.random.normal(jax.random.key(6), (2, 6, 3))
  p = jax.random.normal(jax.random.key(8), (4, 3))
  dmap = pd.prototype_distance_map(z, p)
  assert dmap.shape == (2, 6, 4)
  np.testing.assert_allclose(dmap.min(axis=1), brute_force(z, p, "l2")[0], rtol=1e-5,
                             atol=1e-5)


def test_bad_inputs_raise_readable_errors():
  z, p = jnp.ones((2, 4, 3)), jnp.ones((5, 3))
  with pytest.raises(ValueError, match="metric must be one of"):
    pd.prototype_min_distance(z, p, metric="cos", impl="pallas", interpret=True)
  with pytest.raises(ValueError, match="feature dim 3 != prototype dim 2"):
    pd.prototype_min_distance(z, jnp.ones((5, 2)), impl="pallas", interpret=True)
  with pytest.raises(ValueError, match="features must be"):
    pd.prototype_min_distance(jnp.ones((4, 3)), p, impl="xla")
  with pytest.raises(ValueError, match="impl must be one of"):
    pd.prototype_min_distance(z, p, impl="cuda")
  with pytest.raises(ValueError, match="block_p must be a positive int"):
    pd.BlockSizes(block_p=0)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_kernel_lowers_for_accelerators(platform, monkeypatch):
  """No accelerator here: lower (not run) forward + backward for TPU (Mosaic) and CUDA
  (Triton), which catches unsupported primitives and block shapes at the Pallas level."""
  from jax import export
  if platform == "cuda":  # the kernel picks Triton compiler params on the GPU backend
    monkeypatch.setattr(pd.jax, "default_backend", lambda: "gpu")
  f = jax.jit(jax.grad(lambda z, p: pd.prototype_min_distance_kernel(z, p)[0].sum(),
                       argnums=(0, 1)))
  z = jax.ShapeDtypeStruct((16, 49, 128), jnp.float32)
  p = jax.ShapeDtypeStruct((256, 128), jnp.float32)
  target = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}[platform]
  exp = export.export(f, platforms=(platform,),
                      disabled_checks=[export.DisabledSafetyCheck.custom_call(target)])(z, p)
  assert target in exp.mlir_module()


# ---- Mosaic GPU (Hopper) kernel: Mosaic GPU interpret mode on CPU, CUDA lowering by export

U_BF16 = 2.0 ** -8


@pytest.mark.parametrize("metric", ["l2", "dot"])
def test_mosaic_gpu_kernel_in_interpret_mode(metric):
  # 70 positions (two 64-row chunks, the second padded) and 130 prototypes (two 128-wide
  # tiles, the second padded): padding must never win, and chunk 2 must be able to win.
  rng = np.random.default_rng(7 if metric == "l2" else 8)
  n, hw, d, num_p = 2, 70, 64, 130
  z = jnp.asarray(rng.uniform(0, 1, (n, hw, d)), jnp.bfloat16)
  p = jnp.asarray(rng.uniform(0, 1, (num_p, d)), jnp.bfloat16)
  g = jnp.asarray(rng.standard_normal((n, num_p)), jnp.float32)
  (dist, arg), vjp = jax.vjp(
      lambda z, p: pd.prototype_min_distance(z, p, metric=metric, impl="mosaic_gpu",
                                             interpret=True), z, p)
  zz, pp = np.asarray(z, np.float64), np.asarray(p, np.float64)
  if metric == "l2":
    dmap = ((zz[:, :, None, :] - pp[None, None]) ** 2).sum(-1)
  else:
    dmap = -np.einsum("nhd,jd->nhj", zz, pp)
  want = dmap.min(1)
  # Products of bf16 values are exact in float32; the sums of d = 64 terms round in float32.
  scale = np.abs(dmap).max() + (zz ** 2).sum(-1).max() + (pp ** 2).sum(-1).max()
  np.testing.assert_allclose(np.asarray(dist, np.float64), want, atol=64 * 2.0 ** -24 * scale)
  arg = np.asarray(arg)
  assert arg.min() >= 0 and arg.max() < hw
  assert (arg >= 64).any()  # the second chunk wins somewhere
  picked = np.take_along_axis(dmap, arg[:, None, :], axis=1)[:, 0]
  np.testing.assert_allclose(picked, want, atol=64 * 2.0 ** -24 * scale)
  # Gradient: that of the distance at the chosen position, in float64.
  dz, dp = vjp((g, np.zeros(arg.shape, jax.dtypes.float0)))
  gg = np.asarray(g, np.float64)
  zsel = np.take_along_axis(zz, arg[..., None], axis=1)  # [n, P, d]
  if metric == "l2":
    want_dp = 2 * (gg.sum(0)[:, None] * pp - np.einsum("nj,njd->jd", gg, zsel))
  else:
    want_dp = -np.einsum("nj,njd->jd", gg, zsel)
  want_dz = np.zeros_like(zz)
  for i in range(n):
    for j in range(num_p):
      h = arg[i, j]
      want_dz[i, h] += gg[i, j] * (2 * (zz[i, h] - pp[j]) if metric == "l2" else -pp[j])
  for got, ref in ((dp, want_dp), (dz, want_dz)):
    err = np.abs(np.asarray(got, np.float64) - ref).max()
    assert err <= 4 * U_BF16 * np.abs(ref).max(), err  # cotangents are returned in bf16


def test_mosaic_gpu_kernel_lowers_for_cuda_and_rejects_float32():
  z = jnp.ones((2, 49, 128), jnp.bfloat16)
  p = jnp.ones((200, 128), jnp.bfloat16)
  fn = jax.jit(jax.grad(lambda z, p: pd.prototype_min_distance(
      z, p, impl="mosaic_gpu")[0].sum(), argnums=(0, 1)))
  assert "mosaic_gpu" in jax.export.export(fn, platforms=["cuda"])(z, p).mlir_module().lower()
  with pytest.raises(ValueError, match="use impl='xla'"):
    pd.prototype_min_distance(z.astype(jnp.float32), p.astype(jnp.float32),
                              impl="mosaic_gpu", interpret=True)
