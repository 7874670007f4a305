"""BatchNorm: the custom-VJP training path equals a float64 reference and `nn.BatchNorm`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.layers import conv as lc
from jaxdl.layers import norm


def _reference_float64(x, scale, bias, eps):
  """Training-mode BatchNorm over all axes but the last, numpy float64 (two-pass)."""
  x = np.asarray(x, np.float64)
  axes = tuple(range(x.ndim - 1))
  mean = x.mean(axis=axes)
  var = ((x - mean) ** 2).mean(axis=axes)
  y = (x - mean) / np.sqrt(var + eps) * np.asarray(scale, np.float64) + np.asarray(bias)
  return y, mean, var


def _loss(impl, weights, relu=False):
  """A loss of all three outputs, so that the mean and variance cotangents are non-zero."""
  wy, wm, wv = weights

  def f(x, scale, bias):
    y, mean, var = norm.batch_norm_train(x, scale, bias, 1e-3, relu=relu, impl=impl)
    return (jnp.tanh(y) * wy).sum() + (mean * wm).sum() + (var * wv).sum()
  return f


@pytest.mark.parametrize("shape,relu", [((4, 5, 6, 7), False), ((3, 9), False),
                                        ((2, 3, 4, 5, 2), False), ((4, 5, 6, 7), True),
                                        ((5, 3, 6), True)])
def test_batch_norm_train_values_and_gradients_against_float64(shape, relu):
  rng = np.random.default_rng(0)
  c = shape[-1]
  x = rng.standard_normal(shape) * 3 + rng.standard_normal(c)  # per-channel offsets
  scale, bias = rng.standard_normal(c), rng.standard_normal(c)
  weights = tuple(rng.standard_normal(s) for s in (shape, (c,), (c,)))
  y, mean, var = norm.batch_norm_train(*(jnp.asarray(a, jnp.float32) for a in (x, scale, bias)),
                                       1e-3, relu=relu, impl="fast")
  ry, rmean, rvar = _reference_float64(x, scale, bias, 1e-3)
  if relu:
    assert 0.2 < (ry > 0).mean() < 0.8  # the mask matters
    ry = np.maximum(ry, 0)
  np.testing.assert_allclose(y, ry, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mean, rmean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(var, rvar, rtol=1e-5)
  with jax.enable_x64(True):
    args64 = tuple(jnp.asarray(a, jnp.float64) for a in (x, scale, bias))
    w64 = tuple(jnp.asarray(w, jnp.float64) for w in weights)
    # The float64 reference gradient: autodiff of the plain formulation.
    ref = jax.grad(_loss("xla", w64, relu), argnums=(0, 1, 2))(*args64)
    fast64 = jax.grad(_loss("fast", w64, relu), argnums=(0, 1, 2))(*args64)
  for r, f64 in zip(ref, fast64):  # same math: equal to float64 rounding
    np.testing.assert_allclose(f64, r, rtol=1e-10, atol=1e-12)
  args32 = tuple(jnp.asarray(a, jnp.float32) for a in (x, scale, bias))
  w32 = tuple(jnp.asarray(w, jnp.float32) for w in weights)
  fast32 = jax.grad(_loss("fast", w32, relu), argnums=(0, 1, 2))(*args32)
  for r, f32 in zip(ref, fast32):
    assert f32.dtype == jnp.float32
    np.testing.assert_allclose(f32, r, rtol=2e-4, atol=2e-4 * float(np.abs(r).max()))


def test_concat_normalize_relu_with_per_input_moments_equals_batch_norm_of_the_concatenation():
  """A dense block's norm1 + ReLU from each input's moments (`_moments`) through
  `concat_normalize_relu`: values and gradients (inputs, scale, bias; also through a loss of
  the statistics) equal autodiff of BatchNorm + ReLU over the concatenation, to float64
  rounding in float64 and float32 accuracy in float32."""
  rng = np.random.default_rng(5)
  widths = (3, 2, 4)
  xs = tuple(rng.standard_normal((4, 3, 5, c)) * 2 + rng.standard_normal(c) for c in widths)
  c = sum(widths)
  scale, bias = rng.standard_normal(c), rng.standard_normal(c)
  wy, wm, wv = (rng.standard_normal(s) for s in ((4, 3, 5, c), (c,), (c,)))

  def shared(xs, scale, bias):
    stats = [norm._moments(x, fusable=True) for x in xs]
    mean, var = (jnp.concatenate(s) for s in zip(*stats))
    y = norm.concat_normalize_relu(xs, mean, var, scale, bias, 1e-3)
    return (jnp.tanh(y) * wy).sum() + (mean * wm).sum() + (var * wv).sum(), y

  def plain(xs, scale, bias):
    y, mean, var = norm._bn_plain(jnp.concatenate(xs, -1), scale, bias, 1e-3, relu=True)
    return (jnp.tanh(y) * wy).sum() + (mean * wm).sum() + (var * wv).sum(), y

  def grads(f, dtype):
    args = (tuple(jnp.asarray(x, dtype) for x in xs), jnp.asarray(scale, dtype),
            jnp.asarray(bias, dtype))
    return jax.grad(f, argnums=(0, 1, 2), has_aux=True)(*args)
  with jax.enable_x64(True):
    (ref, ry), (got64, y64) = grads(plain, jnp.float64), grads(shared, jnp.float64)
    assert 0.2 < float((ry > 0).mean()) < 0.8  # the mask matters
    np.testing.assert_allclose(y64, ry, rtol=1e-12, atol=1e-12)
    for r, g in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got64)):
      np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)
  got32, y32 = grads(shared, jnp.float32)
  np.testing.assert_allclose(y32, ry, rtol=1e-5, atol=1e-5)
  for r, g in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got32)):
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-4 * float(np.abs(r).max()))


@pytest.mark.parametrize("offset", [300.0, 1000.0])
def test_batch_norm_train_gradients_with_large_offsets_and_an_outlier_first_position(offset):
  """The backward's sum of g (x - mean) is shifted by x's first position (`_bn_bwd`): with
  channel means `offset` standard deviations from zero and that first position 30 from the
  mean, its float32 gradients are as close to float64 as float32 autodiff's (the unshifted
  sum g x - mean sum g is 1.6-2.3x further off here)."""
  rng = np.random.default_rng(3)
  shape = (8, 6, 6, 5)
  x = rng.standard_normal(shape) + offset * rng.choice([-1, 1], shape[-1])
  x[0, 0, 0] += 30
  x = x.astype(np.float32).astype(np.float64)  # float64 sees the float32 inputs
  scale, bias = rng.standard_normal(5), rng.standard_normal(5)
  weights = tuple(rng.standard_normal(s) for s in (shape, (5,), (5,)))

  def grads(impl, dtype):
    f = _loss(impl, tuple(jnp.asarray(w, dtype) for w in weights), relu=True)
    return jax.grad(f, argnums=(0, 1, 2))(*(jnp.asarray(a, dtype) for a in (x, scale, bias)))
  with jax.enable_x64(True):
    ref = [np.asarray(r) for r in grads("xla", jnp.float64)]
  for r, fast, plain in zip(ref, grads("fast", jnp.float32), grads("xla", jnp.float32)):
    err = lambda g: float(np.abs(np.asarray(g, np.float64) - r).max())
    assert err(fast) <= 1.25 * err(plain) + 1e-7 * float(np.abs(r).max())


def test_batch_norm_train_bfloat16_input_keeps_float32_statistics():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((6, 5, 4)) * 2 + 1, jnp.bfloat16)
  scale, bias = jnp.ones(4), jnp.zeros(4)
  y, mean, var = norm.batch_norm_train(x, scale, bias, impl="fast")
  assert y.dtype == mean.dtype == var.dtype == jnp.float32
  ry, rmean, rvar = _reference_float64(np.asarray(x, np.float64), scale, bias, 1e-5)
  np.testing.assert_allclose(mean, rmean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y, ry, atol=1e-5)
  g = jax.grad(lambda x: (norm.batch_norm_train(x, scale, bias, impl="fast")[0] ** 3).sum())(x)
  gr = jax.grad(lambda x: (norm.batch_norm_train(x, scale, bias, impl="xla")[0] ** 3).sum())(x)
  assert g.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(gr, np.float32),
                             rtol=2e-2, atol=2e-2 * float(jnp.abs(gr.astype(jnp.float32)).max()))


@pytest.mark.parametrize("impl", ["fast", "xla"])
def test_module_matches_flax_batch_norm(impl):
  """Same variables, outputs, gradients and running-average updates as nn.BatchNorm."""
  x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 4, 4, 6)) * 2 + 0.5,
                  jnp.float32)
  ours = norm.BatchNorm(use_running_average=False)
  theirs = nn.BatchNorm(use_running_average=False, use_fast_variance=False, momentum=0.9,
                        epsilon=1e-5)
  v = ours.init(jax.random.key(0), x)
  v_theirs = theirs.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, v_theirs)
  v = {"params": {"scale": jnp.linspace(0.5, 2, 6), "bias": jnp.linspace(-1, 1, 6)},
       "batch_stats": {"mean": jnp.linspace(0, 1, 6), "var": jnp.linspace(1, 2, 6)}}

  def loss(module, params):
    y, new = module.apply({**v, "params": params}, x, mutable=["batch_stats"])
    return (jnp.sin(y) * jnp.arange(6)).sum(), new

  with lc.conv_impl(impl):
    (l1, new1), g1 = jax.value_and_grad(lambda p: loss(ours, p), has_aux=True)(v["params"])
  (l2, new2), g2 = jax.value_and_grad(lambda p: loss(theirs, p), has_aux=True)(v["params"])
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, g2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new1, new2)
  gx = jax.grad(lambda x: ours.apply(v, x, mutable=["batch_stats"])[0].sum() ** 2)(x)
  gx_ref = jax.grad(lambda x: theirs.apply(v, x, mutable=["batch_stats"])[0].sum() ** 2)(x)
  np.testing.assert_allclose(gx, gx_ref, atol=1e-4)
  # Evaluation mode: running statistics, no update.
  eval_ours = norm.BatchNorm(use_running_average=True).apply(v, x)
  eval_theirs = nn.BatchNorm(use_running_average=True, epsilon=1e-5).apply(v, x)
  np.testing.assert_array_equal(eval_ours, eval_theirs)


@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_relu_fuses_the_relu_and_sows_its_input_when_collected(train):
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return norm.batch_norm_relu(self, norm.batch_norm(train, "bn"), x, "act")

  x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 3, 3, 5)), jnp.float32)
  net = Net()
  v = net.init(jax.random.key(0), x)
  v = {"batch_stats": v["batch_stats"],  # init also sowed: leave its preactivations out
       "params": {"bn": {"scale": jnp.linspace(-1, 2, 5), "bias": jnp.linspace(-.5, .5, 5)}}}
  y, state = net.apply(v, x, mutable=["batch_stats"])
  pre = norm.normalize(x, x.mean((0, 1, 2)), x.var((0, 1, 2)), v["params"]["bn"]["scale"],
                       v["params"]["bn"]["bias"]) if train else norm.normalize(
      x, v["batch_stats"]["bn"]["mean"], v["batch_stats"]["bn"]["var"],
      v["params"]["bn"]["scale"], v["params"]["bn"]["bias"])
  np.testing.assert_allclose(y, np.maximum(pre, 0), atol=1e-5)
  y2, col = net.apply(v, x, mutable=["batch_stats", "preactivations"])
  np.testing.assert_allclose(y2, y, atol=1e-6)
  np.testing.assert_allclose(col["preactivations"]["act"][0], pre, atol=1e-5)
  assert "preactivations" not in state
