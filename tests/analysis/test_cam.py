"""Grad-CAM, Grad-CAM++ and Eigen-CAM against closed forms and float64 numpy references.

The pytorch-grad-cam comparison on timm densenet121 / resnet50 is tools/cam_crosscheck.py
(needs torch; result in RESULTS.md).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdl.models as models
from jaxdl import errors
from jaxdl.analysis import cam

RNG = np.random.default_rng(0)


def random_variables(model, x, seed=0):
  """Variables shaped as model.init's (from eval_shape: nothing compiled), drawn in numpy:
  kernels N(0, 1/fan_in), BN scales and variances U(0.5, 1.5), the rest N(0, 0.1^2)."""
  rng = np.random.default_rng(seed)

  def draw(path, s):
    leaf = path[-1].key
    if leaf == "kernel":
      return rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))
    if leaf in ("scale", "var"):
      return rng.uniform(0.5, 1.5, s.shape)
    return 0.1 * rng.standard_normal(s.shape)

  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  return {c: jax.tree_util.tree_map_with_path(
      lambda p, s: jnp.asarray(draw(p, s), s.dtype), shapes[c])
      for c in ("params", "batch_stats") if c in shapes}


def apply_fn(model):
  return jax.jit(lambda v, x: model.apply(v, x))


# ---- float64 numpy references ----------------------------------------------------------------

def resize_ref(m, size):
  """OpenCV INTER_LINEAR written out pixel by pixel (resize.cpp): [h, w] -> size, float64."""
  h, w = m.shape
  out = np.zeros(size)

  def coord(i, n_in, n_out):
    f = (i + 0.5) * n_in / n_out - 0.5
    s = int(np.floor(f))
    t = f - s
    if s < 0:
      s, t = 0, 0.0
    if s >= n_in - 1:
      s, t = n_in - 1, 0.0
    return s, min(s + 1, n_in - 1), t

  for i in range(size[0]):
    y0, y1, ty = coord(i, h, size[0])
    for j in range(size[1]):
      x0, x1, tx = coord(j, w, size[1])
      out[i, j] = ((1 - ty) * ((1 - tx) * m[y0, x0] + tx * m[y0, x1])
                   + ty * ((1 - tx) * m[y1, x0] + tx * m[y1, x1]))
  return out


def minmax_ref(m):
  m = m - m.min()
  return m / (1e-7 + m.max())


def finish_ref(m, size):
  """pytorch-grad-cam's single-layer post-processing in float64."""
  return minmax_ref(resize_ref(minmax_ref(np.maximum(m, 0)), size))


# ---- a linear classifier on a feature map: Grad-CAM in closed form ---------------------------

class Pool(nn.Module):
  """The feature map: 4x4 average pooling of the input (a module, so it can be targeted)."""

  @nn.compact
  def __call__(self, x):
    return nn.avg_pool(x, (4, 4), strides=(4, 4))


class LinearOnMap(nn.Module):
  """logits = mean_hw(act(z)) @ W + b with z = Pool(x): dy_c / dA_hwk = W_kc / (h w)."""
  num_classes: int = 3
  act: str | None = None

  @nn.compact
  def __call__(self, x, train=False):
    z = Pool(name="feat")(x)
    a = {None: lambda v: v, "relu": nn.relu, "relu6": nn.relu6}[self.act](z)
    return nn.Dense(self.num_classes, name="head")(jnp.mean(a, axis=(1, 2)))


@pytest.fixture(scope="module")
def linear():
  x = RNG.standard_normal((3, 16, 12, 5)).astype(np.float32) * 4.0  # some |z| > 6 for ReLU6
  v = {"params": {"head": {"kernel": jnp.asarray(RNG.standard_normal((5, 3)), jnp.float32),
                           "bias": jnp.zeros(3)}}}
  return x, v


def _pool_np(x):
  n, h, w, c = x.shape
  return x.astype(np.float64).reshape(n, h // 4, 4, w // 4, 4, c).mean((2, 4))


def test_grad_cam_linear_model_is_the_class_weight_map(linear):
  x, v = linear
  w = np.asarray(v["params"]["head"]["kernel"], np.float64)
  classes = np.array([2, 0, 1])
  got = np.asarray(cam.grad_cam(LinearOnMap(), v, x, target_layer="feat", classes=classes))
  z = _pool_np(x)
  for i, c in enumerate(classes):
    # alpha_k = W_kc / (h w): the map is ReLU(z @ W[:, c]) up to the positive factor 1 / (h w).
    np.testing.assert_allclose(got[i], finish_ref(z[i] @ w[:, c], (16, 12)), atol=2e-6)
  assert got.shape == (3, 16, 12) and got.min() >= 0 and np.allclose(got.max((1, 2)), 1, 1e-5)


def test_grad_cam_plus_plus_linear_model_closed_form(linear):
  x, v = linear
  w = np.asarray(v["params"]["head"]["kernel"], np.float64)
  classes = np.array([1, 1, 0])
  got = np.asarray(cam.grad_cam_plus_plus(LinearOnMap(), v, x, target_layer="feat",
                                          classes=classes))
  z = _pool_np(x)
  hw = z.shape[1] * z.shape[2]
  for i, c in enumerate(classes):
    g = w[:, c] / hw                          # constant over space
    s = z[i].sum((0, 1))                      # sum_ab A^k_ab
    aij = np.where(g != 0, g ** 2 / (2 * g ** 2 + s * g ** 3 + 1e-6), 0.0)
    alpha = hw * np.maximum(g, 0) * aij       # sum_ij ReLU(g) a_ij
    np.testing.assert_allclose(got[i], finish_ref(z[i] @ alpha, (16, 12)), atol=2e-6)


@pytest.mark.parametrize("act", ["relu", "relu6"])
def test_activation_target_gets_the_unmasked_gradient(linear, act):
  """'feat:relu' is the activated map with dy/dA = W / hw everywhere, also where A = 0 (or 6);
  'feat' alone is the pre-activation z, whose gradient is masked by the model's ReLU."""
  x, v = linear
  model = LinearOnMap(act=act)
  w = np.asarray(v["params"]["head"]["kernel"], np.float64)
  z = _pool_np(x)
  hw = z.shape[1] * z.shape[2]
  a = np.maximum(z, 0) if act == "relu" else np.clip(z, 0, 6)
  classes = jnp.array([0, 1, 2])
  out = cam.activations_and_gradients(model, v, x, target_layer=f"feat:{act}", classes=classes)
  np.testing.assert_allclose(out["activations"][0], a, atol=1e-6)
  want_g = np.broadcast_to((w[:, [0, 1, 2]].T / hw)[:, None, None, :], z.shape)
  np.testing.assert_allclose(out["gradients"][0], want_g, rtol=1e-6, atol=1e-9)
  got = np.asarray(cam.grad_cam(model, v, x, target_layer=f"feat:{act}", classes=classes))
  masked = np.asarray(cam.grad_cam(model, v, x, target_layer="feat", classes=classes))
  live = (z > 0) & (z < 6) if act == "relu6" else z > 0
  for i in range(3):
    np.testing.assert_allclose(got[i], finish_ref(a[i] @ w[:, i], (16, 12)), atol=2e-6)
    alpha = (w[:, i] / hw) * live[i].mean((0, 1))
    np.testing.assert_allclose(masked[i], finish_ref(z[i] @ alpha, (16, 12)), atol=2e-6)
  assert np.abs(got - masked).max() > 1e-2  # the two targets really differ here


# ---- a tiny CNN: batching, jit, Eigen-CAM -----------------------------------------------------

@pytest.fixture(scope="module")
def tiny_cnn():
  model = models.create("cnn_small", features=(4, 8), dense=(8,), num_classes=5)
  x = RNG.standard_normal((4, 16, 16, 3)).astype(np.float32)
  return model, random_variables(model, x), x


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam"])
def test_batch_equals_per_image(tiny_cnn, method):
  model, v, x = tiny_cnn
  fn = cam.METHODS[method]
  classes = np.array([3, 0, 4, 1])
  kw = (lambda i: {}) if method == "eigencam" else (lambda i: {"classes": classes[i]})
  batch = np.asarray(fn(model, v, x, **kw(slice(None))))
  single = np.concatenate([np.asarray(fn(model, v, x[i:i + 1], **kw(slice(i, i + 1))))
                           for i in range(4)])
  assert batch.shape == (4, 16, 16)
  np.testing.assert_allclose(batch, single, atol=1e-5)
  assert np.abs(batch[0] - batch[1]).max() > 1e-2  # the images get different maps


def test_grad_cam_under_jit_with_traced_classes(tiny_cnn):
  model, v, x = tiny_cnn
  f = jax.jit(lambda v, x, c: cam.grad_cam(model, v, x, classes=c))
  a = f(v, x, jnp.array([0, 1, 2, 3]))
  b = f(v, x, jnp.array([4, 4, 4, 4]))  # same compiled function, other classes
  np.testing.assert_allclose(a, cam.grad_cam(model, v, x, classes=np.array([0, 1, 2, 3])),
                             atol=1e-6)
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-2
  # A model with list-valued fields cannot be a static jit argument: it still works.
  listy = models.create("cnn_small", features=[4, 8], dense=[8], num_classes=5)
  np.testing.assert_allclose(
      jax.jit(lambda v, x, c: cam.grad_cam(listy, v, x, classes=c))(v, x, jnp.arange(4)), a,
      atol=1e-6)
  # classes=None explains the arg max class.
  top = np.argmax(np.asarray(apply_fn(model)(v, x)), -1)
  np.testing.assert_allclose(cam.grad_cam(model, v, x), cam.grad_cam(model, v, x, classes=top),
                             atol=1e-6)


def eigen_ref(acts):
  """pytorch-grad-cam's get_2d_projection_with_sign_correction, float64. [N,h,w,C] -> [N,h,w]."""
  out = []
  for a in np.asarray(acts, np.float64):
    m = a.reshape(-1, a.shape[-1])
    m = m - m.mean(0)
    _, _, vt = np.linalg.svd(m, full_matrices=True)
    p = m @ vt[0]
    out.append((-p if abs(p.min()) > abs(p.max()) else p).reshape(a.shape[:2]))
  return np.stack(out)


def test_eigen_projection_equals_float64_svd_and_ignores_sign():
  # A planted rank-one structure (clear spectral gap) plus noise; h*w < C and h*w > C.
  for h, w, c in [(3, 4, 20), (6, 5, 7)]:
    u = RNG.standard_normal((2, h * w, 1))
    vec = RNG.standard_normal((2, 1, c))
    acts = (3.0 * u @ vec + 0.3 * RNG.standard_normal((2, h * w, c))).reshape(2, h, w, c)
    acts = acts.astype(np.float32)
    got = np.asarray(jax.jit(cam.eigen_projection)(acts))
    np.testing.assert_allclose(got, eigen_ref(acts), atol=2e-5)
    # The sign correction makes the map independent of the SVD's sign: -A gives the same.
    np.testing.assert_allclose(jax.jit(cam.eigen_projection)(-acts), got, atol=2e-5)


def test_eigen_cam_equals_float64_numpy_reference(tiny_cnn):
  model, v, x = tiny_cnn
  _, (acts,) = jax.jit(lambda v, x: cam.capture(model, v, x))(v, x)
  got = np.asarray(cam.eigen_cam(model, v, x))
  want = np.stack([finish_ref(p, (16, 16)) for p in eigen_ref(acts)])
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_resize_is_opencv_linear():
  m = RNG.standard_normal((2, 5, 7)).astype(np.float32)
  for size in [(33, 50), (5, 7), (10, 14)]:
    got = np.asarray(cam.resize_cam(jnp.asarray(m), size))
    np.testing.assert_allclose(got, np.stack([resize_ref(a, size) for a in m]), atol=1e-5)
  # Independent implementation: for upsampling, jax.image.resize's triangle kernel with
  # half-pixel centres and renormalized edges is the same rule.
  want = jax.image.resize(jnp.asarray(m), (2, 33, 50), "linear", antialias=False)
  np.testing.assert_allclose(cam.resize_cam(jnp.asarray(m), (33, 50)), want, atol=1e-5)


# ---- default target layers ----------------------------------------------------------------------

FAMILIES = [
    ("resnet18", {}), ("resnet20", {}), ("preact_resnet18", {"width": 4}),
    ("densenet_bc_100_k12", {"growth_rate": 4, "block_config": (2, 2)}),
    ("mobilenetv2_035", {}), ("mcunet_in1", {}),
    ("rdnet_tiny", {"num_init_features": 8, "growth_rates": (8, 8, 8), "num_blocks_list": (1, 1, 1),
                    "is_downsample_block": (False, True, False),
                    "block_types": ("Block", "Block", "BlockESE")}),
    ("vgg11", {}), ("vgg11_bn", {}), ("cnn_small", {}), ("cnn_cifar", {}),
]


@pytest.mark.parametrize("name,overrides", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_default_target_is_the_last_feature_map(name, overrides):
  if name not in models.list_models():
    pytest.skip(f"{name} is not registered in this checkout")
  model = models.create(name, **overrides)
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  v = jax.eval_shape(model.init, jax.random.key(0), x)
  target = cam.default_target_layer(model)
  feats = jax.eval_shape(lambda v, x: models.create(name, features_only=True, **overrides)
                         .apply(v, x), v, x)
  _, (a,) = jax.eval_shape(lambda v, x: cam.capture(model, v, x), v, x)
  if name.startswith("vgg"):  # before the last 2x2 max pool, which is not a module
    assert a.shape == (1, 2 * feats.shape[1], 2 * feats.shape[2], feats.shape[3])
  else:
    assert a.shape == feats.shape, target


def test_densenet_default_target_values_and_gradient():
  """densenet's default 'norm5:relu' is exactly the features_only output (timm's
  BatchNormAct2d output), and its gradient is the classifier column / hw at every position."""
  kw = dict(growth_rate=4, block_config=(1, 1), num_classes=3)
  model = models.create("densenet_bc_100_k12", **kw)
  x = RNG.standard_normal((2, 8, 8, 3)).astype(np.float32)
  v = random_variables(model, x)
  feats, logits = jax.jit(lambda v, x: (
      models.create("densenet_bc_100_k12", features_only=True, **kw).apply(v, x),
      model.apply(v, x)))(v, x)
  out = cam.activations_and_gradients(model, v, x, classes=np.array([2, 0]))
  a, g = out["activations"][0], out["gradients"][0]
  np.testing.assert_allclose(a, feats, atol=1e-6)
  assert float(jnp.mean(a == 0)) > 0.1  # the ReLU is active somewhere ...
  k = np.asarray(v["params"]["classifier"]["kernel"])
  hw = a.shape[1] * a.shape[2]
  want = np.broadcast_to((k[:, [2, 0]].T / hw)[:, None, None, :], a.shape)
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-9)  # ... and masks nothing here
  np.testing.assert_allclose(out["logits"], logits, atol=1e-5)


def test_list_layers(linear):
  x, v = linear
  assert cam.list_layers(LinearOnMap(), v, x) == [("feat", (3, 4, 3, 5))]


# ---- errors -----------------------------------------------------------------------------------

def test_clear_errors(linear):
  x, v = linear
  model = LinearOnMap()
  with pytest.raises(errors.UnknownNameError, match="'feet' is not a module.*'feat'"):
    cam.grad_cam(model, v, x, target_layer="feet", classes=0)
  with pytest.raises(errors.ShapeError, match="'head' returns"):
    cam.eigen_cam(model, v, x, target_layer="head")
  with pytest.raises(errors.ShapeError, match="classes must have shape"):
    cam.grad_cam(model, v, x, target_layer="feat", classes=np.array([0, 1]))
  with pytest.raises(errors.ShapeError, match="NHWC"):
    cam.grad_cam(model, v, x[0], target_layer="feat")
  with pytest.raises(errors.ConfigError, match="activation"):
    cam.TargetLayer("feat", "gelu")
  with pytest.raises(errors.ConfigError, match="no default CAM target layer"):
    cam.default_target_layer(model)
  for e in (errors.UnknownNameError, errors.ShapeError):
    try:
      cam.eigen_cam(model, v, x, target_layer="feet" if e is errors.UnknownNameError else "head")
    except e as err:
      assert "\n" not in str(err)
