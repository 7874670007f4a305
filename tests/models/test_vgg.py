"""VGG: timm layout, adaptive pooling of small inputs (vs PyTorch's definition), features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdl.models as models
from jaxdl.models.vgg import adaptive_avg_pool


def _adaptive_reference(x, oh, ow):
  """PyTorch adaptive_avg_pool2d: bin i spans [floor(i*H/o), ceil((i+1)*H/o)), float64."""
  n, h, w, c = x.shape
  out = np.zeros((n, oh, ow, c))
  for i in range(oh):
    for j in range(ow):
      r0, r1 = (i * h) // oh, int(np.ceil((i + 1) * h / oh))
      c0, c1 = (j * w) // ow, int(np.ceil((j + 1) * w / ow))
      out[:, i, j] = x[:, r0:r1, c0:c1].astype(np.float64).mean(axis=(1, 2))
  return out


@pytest.mark.parametrize("h,w,oh,ow", [(1, 1, 7, 7), (3, 5, 7, 7), (10, 7, 7, 7), (9, 9, 4, 3)])
def test_adaptive_avg_pool_matches_torch_definition(h, w, oh, ow):
  x = np.random.default_rng(h * w).standard_normal((2, h, w, 3)).astype(np.float32)
  np.testing.assert_allclose(adaptive_avg_pool(jnp.asarray(x), oh, ow),
                             _adaptive_reference(x, oh, ow), rtol=1e-6, atol=1e-6)


def test_vgg_layout_and_features():
  x = jnp.zeros((2, 32, 32, 3))
  model = models.create("vgg16", num_classes=200)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  # timm's nn.Sequential indices: conv, ReLU (, conv, ReLU), max pool ...
  convs = sorted(int(k.split("_")[1]) for k in shapes if k.startswith("features_"))
  assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
  assert shapes["pre_logits"]["fc1"]["kernel"].shape == (7, 7, 512, 4096)
  assert shapes["head"]["fc"]["kernel"].shape == (4096, 200)
  logits = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x)[0])
  assert logits.shape == (2, 200)
  feats = jax.eval_shape(lambda: models.create("vgg19", features_only=True).init_with_output(
      jax.random.key(0), jnp.zeros((2, 224, 224, 3)))[0])
  assert feats.shape == (2, 7, 7, 512)  # ProtoPNet's 7x7 grid at 224x224


def test_vgg_bn_variant_has_batch_stats():
  shapes = jax.eval_shape(models.create("vgg11_bn").init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))
  assert shapes["batch_stats"]["features_1"]["mean"].shape == (64,)
  assert "features_4" in shapes["params"]  # conv 0, bn 1, relu 2, pool 3, conv 4
