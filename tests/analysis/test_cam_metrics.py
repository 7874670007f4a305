"""Deletion / insertion curves and ROAD on crafted inputs with known answers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg

from jaxdl import errors
from jaxdl.analysis import cam_metrics as cm

RNG = np.random.default_rng(0)


class PixelLinear(nn.Module):
  """logit_0 = sum_hw x[..., 0] * weight_map, logit_1 = 0: every pixel's share is known."""
  weight_map: tuple

  @nn.compact
  def __call__(self, x, train=False):
    w = jnp.asarray(self.weight_map, x.dtype)
    y = jnp.sum(x[..., 0] * w, axis=(1, 2))
    return jnp.stack([y, jnp.zeros_like(y)], axis=-1)


def test_auc_is_the_normalized_trapezoid():
  c = np.stack([np.ones(11), np.linspace(1, 0, 11), np.linspace(0, 1, 11) ** 2])
  got = np.asarray(cm.auc(jnp.asarray(c)))
  t = np.linspace(0, 1, 11)
  np.testing.assert_allclose(got, [np.trapezoid(r, t) for r in c], atol=1e-6)
  np.testing.assert_allclose(got[:2], [1.0, 0.5], atol=1e-6)


def test_saliency_ranks_order_and_ties():
  s = jnp.asarray([[[0.5, 0.9], [0.5, 0.1]]])
  np.testing.assert_array_equal(cm.saliency_ranks(s)[0], [[1, 0], [2, 3]])


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_causal_curves_of_a_pixel_linear_model(mode):
  h, w = 5, 5
  wmap = RNG.uniform(0.1, 1.0, (h, w))
  model = PixelLinear(tuple(map(tuple, wmap)))
  x = jnp.asarray(RNG.uniform(0.5, 1.5, (2, h, w, 1)), jnp.float32)
  # Image 0 is explained by the true contributions, image 1 by their reverse.
  contrib = np.asarray(x[..., 0]) * wmap
  sal = jnp.asarray(np.stack([contrib[0], -contrib[1]]))
  curve, area = (cm.deletion if mode == "deletion" else cm.insertion)(
      model, {}, x, sal, classes=0, num_steps=7, score="logit",
      substrate=jnp.zeros_like(x))
  step = 4  # ceil(25 / 7); the last step clips at all 25 pixels
  for i in range(2):
    order = np.argsort(-np.asarray(sal[i]).ravel(), kind="stable")
    gone = np.concatenate([[0.0], np.cumsum(contrib[i].ravel()[order])])
    counts = np.minimum(np.arange(8) * step, 25)
    want = gone[-1] - gone[counts] if mode == "deletion" else gone[counts]
    np.testing.assert_allclose(curve[i], want, rtol=1e-5)
  np.testing.assert_allclose(area, cm.auc(curve), rtol=1e-6)
  # The faithful map deletes faster / inserts faster than the reversed one (area over total).
  rel = np.asarray(area) / contrib.sum((1, 2))
  assert (rel[0] < rel[1]) if mode == "deletion" else (rel[0] > rel[1])


def test_causal_curve_default_substrates_and_probabilities():
  model = PixelLinear(tuple(map(tuple, np.ones((6, 6)))))
  x = jnp.asarray(RNG.uniform(0.0, 1.0, (1, 6, 6, 1)), jnp.float32)
  sal = jnp.asarray(RNG.uniform(size=(1, 6, 6)))
  dele = cm.causal_curve(model, {}, x, sal, mode="deletion", num_steps=4)
  ins = cm.causal_curve(model, {}, x, sal, mode="insertion", num_steps=4)
  p = lambda img: jax.nn.softmax(model.apply({}, img))[:, 0]  # noqa: E731
  np.testing.assert_allclose(dele[:, 0], p(x), rtol=1e-6)            # start: the image
  np.testing.assert_allclose(dele[:, -1], p(jnp.zeros_like(x)), rtol=1e-6)  # end: zeros
  np.testing.assert_allclose(ins[:, 0], p(cm.gaussian_blur(x)), rtol=1e-6)  # start: blurred
  np.testing.assert_allclose(ins[:, -1], p(x), rtol=1e-6)
  # The blur is a normalized 11-tap Gaussian with zero padding: an interior impulse spreads
  # into exp(-d^2 / 50) weights summing to 1.
  imp = np.zeros((1, 21, 21, 1), np.float32)
  imp[0, 10, 10] = 1.0
  b = np.asarray(cm.gaussian_blur(jnp.asarray(imp)))[0, :, :, 0]
  g = np.exp(-0.5 * (np.arange(-5, 6) / 5.0) ** 2)
  np.testing.assert_allclose(b[5:16, 5:16], np.outer(g, g) / g.sum() ** 2, rtol=1e-5)
  assert b.sum() == pytest.approx(1.0, abs=1e-5)


# ---- ROAD imputation ---------------------------------------------------------------------------

def impute_ref(img, keep):
  """ROAD's linear imputation written out as a scipy sparse system, float64 (noise 0)."""
  h, w = keep.shape
  removed = np.argwhere(keep < 0.5)
  index = -np.ones((h, w), int)
  index[tuple(removed.T)] = np.arange(len(removed))
  rows, cols, vals = [], [], []
  b = np.zeros((len(removed), img.shape[-1]))
  for k, (i, j) in enumerate(removed):
    total = 0.0
    for di in (-1, 0, 1):
      for dj in (-1, 0, 1):
        ii, jj = i + di, j + dj
        if (di, dj) == (0, 0) or not (0 <= ii < h and 0 <= jj < w):
          continue
        wt = 1 / 6 if di == 0 or dj == 0 else 1 / 12
        total += wt
        if keep[ii, jj] > 0.5:
          b[k] += wt * img[ii, jj]
        else:
          rows.append(k), cols.append(index[ii, jj]), vals.append(-wt)
    rows.append(k), cols.append(k), vals.append(total)
  a = scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(len(removed),) * 2)
  out = img.astype(np.float64).copy()
  out[tuple(removed.T)] = scipy.sparse.linalg.spsolve(a, b)
  return out


@pytest.fixture(scope="module")
def impute():
  return jax.jit(lambda x, keep: cm.noisy_linear_impute(x, keep, rng_key=jax.random.key(0),
                                                        noise=0.0))


def test_imputation_equals_sparse_solve(impute):
  h, w = 12, 12
  x = RNG.standard_normal((3, h, w, 2)).astype(np.float32)
  keep = (RNG.uniform(size=(3, h, w)) > 0.5).astype(np.float32)
  keep[1, :, :8] = 0.0          # a large hole touching three borders
  keep[2] = 1.0
  keep[2, 3:9, 4:10] = 0.0      # an interior block
  got = np.asarray(impute(x, keep))
  want = np.stack([impute_ref(x[i], keep[i]) for i in range(3)])
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_array_equal(got[keep > 0.5], x[keep > 0.5])  # kept pixels untouched


def test_imputation_reproduces_a_linear_ramp(impute):
  """With symmetric weights a linear image is 'harmonic': an interior hole is filled exactly."""
  yy, xx = np.mgrid[:12, :12].astype(np.float32)
  x = np.stack([0.3 * yy - 0.2 * xx + 1.0, 0.1 * xx], -1)[None]
  keep = np.ones((1, 12, 12), np.float32)
  keep[0, 2:9, 3:10] = 0.0
  np.testing.assert_allclose(impute(x, keep), x, atol=1e-5)


def test_imputation_noise_and_all_removed():
  x = jnp.full((1, 40, 40, 3), 2.0)
  keep = jnp.zeros((1, 40, 40)).at[0, :, :4].set(1.0)
  out = np.asarray(cm.noisy_linear_impute(x, keep, rng_key=jax.random.key(1), noise=0.5))
  resid = out[0, :, 4:] - 2.0   # 4320 imputed values: constant image + N(0, 0.25)
  assert abs(resid.std() - 0.5) < 0.05 and abs(resid.mean()) < 0.05
  np.testing.assert_array_equal(out[0, :, :4], 2.0)
  # Nothing kept: no solution; imputed with 0 (+ noise) rather than NaN.
  out = cm.noisy_linear_impute(x, jnp.zeros((1, 40, 40)), rng_key=jax.random.key(0), noise=0.0)
  np.testing.assert_array_equal(out, 0.0)


def test_road_masks_follow_pytorch_grad_cam_percentiles():
  s = RNG.permutation(100).reshape(1, 10, 10) / 99.0
  for p in (10, 30, 90):
    morf = np.asarray(cm.road_keep_mask(jnp.asarray(s), p, "morf"))[0]
    lerf = np.asarray(cm.road_keep_mask(jnp.asarray(s), p, "lerf"))[0]
    assert morf.sum() == p and lerf.sum() == p   # (100 - p)% removed
    np.testing.assert_array_equal(morf, s[0] < np.percentile(s[0], p))        # least kept
    np.testing.assert_array_equal(lerf, (1 - s[0]) < np.percentile(1 - s[0], p))  # most kept
    assert s[0][morf > 0].max() < s[0][morf == 0].min()
    assert s[0][lerf > 0].min() > s[0][lerf == 0].max()


def test_road_on_a_constant_image_changes_nothing():
  """Linear imputation of a constant image is that constant: every ROAD change is 0."""
  model = PixelLinear(tuple(map(tuple, RNG.uniform(size=(8, 8)))))
  x = jnp.full((2, 8, 8, 1), 0.7)
  sal = jnp.asarray(RNG.uniform(size=(2, 8, 8)))
  for order in ("morf", "lerf"):
    d = cm.road(model, {}, x, sal, rng_key=jax.random.key(0), order=order, noise=0.0,
                classes=jnp.array([0, 1]), score="logit", percentiles=(20, 50))
    assert d.shape == (2, 2)
    np.testing.assert_allclose(d, 0.0, atol=1e-5)
  # With noise the score moves, and road_combined is (mean LeRF - mean MoRF) / 2.
  key = jax.random.key(3)
  comb = cm.road_combined(model, {}, x, sal, rng_key=key, classes=jnp.array([0, 0]),
                          score="logit", percentiles=(20, 50))
  k1, k2 = jax.random.split(key)
  lerf = cm.road(model, {}, x, sal, rng_key=k1, order="lerf", classes=jnp.array([0, 0]), score="logit",
                 percentiles=(20, 50))
  morf = cm.road(model, {}, x, sal, rng_key=k2, order="morf", classes=jnp.array([0, 0]), score="logit",
                 percentiles=(20, 50))
  assert np.abs(np.asarray(morf)).max() > 1e-3
  np.testing.assert_allclose(comb, (lerf.mean(-1) - morf.mean(-1)) / 2, rtol=1e-5, atol=1e-7)


def test_metric_errors():
  model = PixelLinear(((1.0,),))
  x = jnp.ones((1, 1, 1, 1))
  with pytest.raises(errors.ShapeError, match="saliency must be"):
    cm.deletion(model, {}, x, jnp.ones((1, 2, 2)))
  with pytest.raises(errors.ConfigError, match="mode must be"):
    cm.causal_curve(model, {}, x, jnp.ones((1, 1, 1)), mode="both")
  with pytest.raises(errors.ConfigError, match="order"):
    cm.road_keep_mask(jnp.ones((1, 1, 1)), 50, "random")
  with pytest.raises(errors.ConfigError, match="score"):
    cm.deletion(model, {}, x, jnp.ones((1, 1, 1)), score="accuracy")
