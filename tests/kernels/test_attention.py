"""PFN context attention (jaxdl/kernels/attention.py): the portable Pallas kernel in
interpret mode and the dot_product_attention path, against float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.kernels import attention as att


def _numpy_attention(q, k, v, nc):
  """float64 double loop over datasets and heads: softmax over the first nc[b] keys."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b, t, h, d = q.shape
  out = np.zeros_like(q)
  for i in range(b):
    n = int(nc[i])
    if n == 0:
      continue
    for j in range(h):
      s = q[i, :, j] @ k[i, :n, j].T / np.sqrt(d)
      w = np.exp(s - s.max(axis=1, keepdims=True))
      out[i, :, j] = (w / w.sum(axis=1, keepdims=True)) @ v[i, :n, j]
  return out


@pytest.fixture(scope="module")
def case():
  # 3 datasets: context 5 (inside the first key block), 11 (two blocks, ragged), 0 (empty).
  b, t, h, d = 3, 12, 2, 8
  key = jax.random.key(0)
  q, k, v = (jax.random.normal(jax.random.fold_in(key, i), (b, t, h, d)) for i in range(3))
  nc = jnp.array([5, 11, 0])
  r = jax.random.normal(jax.random.key(9), (b, t, h, d))
  fn = lambda q, k, v: att.context_attention(q, k, v, nc, impl="pallas", interpret=True,
                                             block_sizes=att.BlockSizes(8, 8))
  out, vjp = jax.vjp(fn, q, k, v)
  return (q, k, v, nc, r), out, vjp(r)


def test_kernel_values_match_float64_loop(case):
  (q, k, v, nc, _), out, _ = case
  want = _numpy_attention(q, k, v, nc)
  assert out.shape == q.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out[2], 0.0)  # empty context: exactly zero
  np.testing.assert_allclose(out, att.context_attention_reference(q, k, v, nc), rtol=1e-5,
                             atol=1e-6)


def test_kernel_gradients_match_float64_autodiff(case):
  (q, k, v, nc, r), _, grads = case
  with jax.enable_x64(True):
    f64 = lambda a: jnp.asarray(np.asarray(a, np.float64))
    want = jax.grad(lambda q, k, v: jnp.sum(att.context_attention_reference(q, k, v, nc)
                                            * f64(r)), argnums=(0, 1, 2))(f64(q), f64(k), f64(v))
    want = [np.asarray(w) for w in want]
  for got, ref in zip(grads, want):
    np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=1e-4, atol=1e-5)
  # Keys beyond the context get no gradient.
  np.testing.assert_array_equal(grads[1][0, 5:], 0.0)
  np.testing.assert_array_equal(grads[2][1, 11:], 0.0)


def test_dot_product_attention_path_and_model_equivalence(case):
  (q, k, v, nc, _), out, _ = case
  got = att.context_attention(q, k, v, nc, impl="dpa")
  np.testing.assert_allclose(got, out, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[2], 0.0)


def test_errors_are_readable():
  q = jnp.zeros((2, 4, 1, 8))
  with pytest.raises(ValueError, match="impl must be one of"):
    att.context_attention(q, q, q, jnp.array([1, 2]), impl="flash")
  with pytest.raises(ValueError, match="num_context must be"):
    att.context_attention(q, q, q, jnp.array([1, 2, 3]))
  with pytest.raises(ValueError, match="k and v must be"):
    att.context_attention(q, q[:, :, :, :4], q, jnp.array([1, 2]))
  with pytest.raises(ValueError, match="block_q"):
    att.BlockSizes(block_q=0)


def test_auto_uses_xla_on_gpu_and_cpu(monkeypatch):
  # Measured on an H100 (BENCHMARKS.md): the materialized-logits XLA path beat cuDNN (dpa) and
  # the Pallas kernel at PFN shapes, so "auto" must resolve to it on GPU, and on CPU.
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 16, 2, 8)), jnp.float32) for _ in range(3))
  nc = jnp.asarray([5, 0], jnp.int32)
  ref = att.context_attention_reference(q, k, v, nc)
  for backend in ("cpu", "gpu"):
    monkeypatch.setattr(att.jax, "default_backend", lambda b=backend: b)
    np.testing.assert_array_equal(np.asarray(att.context_attention(q, k, v, nc)),
                                  np.asarray(ref))
