"""Consistency / stability scores on crafted activation maps, cv2-style bicubic upsampling,
and the push."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import errors, models
from jaxdl.analysis import prototypes as ap

NAN = np.nan


def opencv_cubic_1d(src, out_size):
  """Independent scalar transcription of OpenCV's INTER_CUBIC along one axis."""
  a = -0.75
  n = len(src)
  out = np.zeros(out_size)
  for dx in range(out_size):
    fx = (dx + 0.5) * n / out_size - 0.5
    sx = int(np.floor(fx))
    t = fx - sx
    def k(x):
      x = abs(x)
      if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
      if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
      return 0.0
    for m in range(-1, 3):
      out[dx] += k(m - t) * src[min(max(sx + m, 0), n - 1)]
  return out


def test_cubic_upsampling_matches_opencv_formula():
  rng = np.random.default_rng(0)
  src = rng.normal(size=(3, 4))
  up = np.asarray(ap.upsample_bicubic(jnp.asarray(src), (9, 14)))
  want = np.stack([opencv_cubic_1d(r, 14) for r in src])           # along x
  want = np.stack([opencv_cubic_1d(c, 9) for c in want.T], axis=1)  # then along y
  np.testing.assert_allclose(up, want, rtol=1e-5, atol=1e-5)
  # Constants stay constant (weights sum to one, borders replicate).
  np.testing.assert_allclose(ap.upsample_bicubic(jnp.full((2, 2), 3.0), 7), 3.0, rtol=1e-6)


def peaked_maps(peaks, h=4, w=4):
  """[N, P, h, w] maps whose single maximum sits at peaks[n][p] = (row, col)."""
  n, p = len(peaks), len(peaks[0])
  maps = np.zeros((n, p, h, w), np.float32)
  for i in range(n):
    for j in range(p):
      maps[i, j][peaks[i][j]] = 1.0
  return maps


def test_part_hits_by_hand():
  # 4x4 map upsampled to 40x40: a peak in cell (r, c) lands at pixel ~ (10 r + 4.5, 10 c + 4.5)
  maps = peaked_maps([[(0, 0), (2, 2)]])
  up = np.asarray(ap.upsample_bicubic(jnp.asarray(maps), 40))
  y, x = np.unravel_index(up[0, 1].argmax(), (40, 40))
  parts = np.array([[[x, y + 5], [x + 6, y], [x, y - 6], [NAN, NAN], [0.0, 0.0]]], np.float32)
  hits = np.asarray(ap.part_hits(maps, parts, 40, half_size=5))
  assert hits.shape == (1, 2, 5) and hits.dtype == bool
  # Prototype 1's box is rows/cols [y-5, min(40, y+5)]: inclusive bounds -> (x, y+5) hits.
  np.testing.assert_array_equal(hits[0, 1], [True, False, False, False, False])
  # Prototype 0 peaks near (4, 4): its box is clipped at 0 and covers (0, 0).
  assert hits[0, 0, 4] and not hits[0, 0, 3]


def crafted_case():
  """3 images of one class, 2 prototypes, 2 parts; hits chosen by placing peaks."""
  # 4x4 maps upsampled to 40 px, half_size 5: a peak in cell (r, c) covers keypoints near
  # pixel (10 c + 5, 10 r + 5).
  at = lambda r, c: [10 * c + 5, 10 * r + 5]
  parts = np.array([
      [at(0, 0), at(3, 3)],          # image 0: part 0 at cell (0,0), part 1 at (3,3)
      [at(0, 0), [NAN, NAN]],        # image 1: part 1 absent
      [at(1, 1), at(3, 3)],          # image 2
  ], np.float32)
  # prototype 0 always on part 0; prototype 1 on part 1 in image 0 only, elsewhere nowhere.
  maps = peaked_maps([[(0, 0), (3, 3)], [(0, 0), (2, 0)], [(1, 1), (0, 3)]])
  return maps, parts


def test_consistency_by_hand():
  maps, parts = crafted_case()
  hits = np.asarray(ap.part_hits(maps, parts, 40, half_size=5))
  np.testing.assert_array_equal(hits[:, 0], [[True, False], [True, False], [True, False]])
  np.testing.assert_array_equal(hits[:, 1], [[False, True], [False, False], [False, False]])
  # prototype 0: part 0 mean 3/3 -> consistent; prototype 1: part 1 mean 1/2 (absent once).
  assert ap.consistency_score(maps, parts, 40, half_size=5) == 50.0
  # With threshold 0.5 prototype 1 becomes consistent.
  assert ap.consistency_score(maps, parts, 40, half_size=5, threshold=0.5) == 100.0
  # Grouped by class: image 2 alone in class 1 -> its prototype 1 never hits: 3 of 4.
  score = ap.consistency_score(maps, parts, 40, half_size=5, labels=[0, 0, 1])
  assert score == 75.0


def test_stability_by_hand():
  maps, parts = crafted_case()
  noisy = maps.copy()
  noisy[1, 0] = peaked_maps([[(3, 3)]])[0, 0]  # image 1, prototype 0 moves off its part
  noisy[2, 1] = peaked_maps([[(0, 2)]])[0, 0]  # moves but still hits nothing: unchanged
  # prototype 0: 2/3 images unchanged; prototype 1: 3/3 -> mean 5/6
  np.testing.assert_allclose(ap.stability_score(maps, noisy, parts, 40, half_size=5),
                             100 * 5 / 6)
  np.testing.assert_allclose(ap.stability_score(maps, maps, parts, 40, half_size=5), 100.0)


def test_scores_reject_bad_shapes():
  with pytest.raises(errors.ShapeError, match="activation_maps"):
    ap.part_hits(np.zeros((2, 3, 4)), np.zeros((2, 1, 2)), 8)
  with pytest.raises(errors.ShapeError, match="part_locations"):
    ap.part_hits(np.zeros((2, 3, 4, 4)), np.zeros((3, 1, 2)), 8)


def test_perturb_is_clipped_gaussian():
  x = jnp.zeros((200, 8, 8, 3))
  y = np.asarray(ap.perturb(x, jax.random.key(0)))
  assert np.abs(y).max() <= 0.25 + 1e-7
  assert 0.15 < y.std() < 0.2  # N(0, 0.2) clipped at 1.25 sigma


def test_high_activation_box():
  a = np.zeros((10, 10))
  a[2:4, 5:8] = 1.0
  assert ap.high_activation_box(a, percentile=95) == (2, 4, 5, 8)


@pytest.mark.parametrize("variant", ["protopnet", "stprotopnet"])
def test_push_puts_prototypes_on_training_patches(variant):
  model = models.create(variant, num_classes=2, backbone="cnn", prototypes_per_class=2,
                        prototype_dim=3, backbone_kwargs={"features": (4, 8)}, impl="xla")
  images = np.random.default_rng(0).integers(0, 255, size=(6, 8, 8, 3)).astype(np.uint8)
  labels = np.array([0, 1, 0, 1, 1, 0])
  prep = lambda x: x.astype(jnp.float32) / 255.0
  v = model.init(jax.random.key(0), prep(jnp.asarray(images[:1])))
  new, info = ap.push_prototypes(model, v, images, labels, prep, batch_size=4)
  # The push's own forward pass (same jitted function, same batches): bitwise comparable.
  fwd = ap.jitted_apply(model, "push_forward", branch="support")
  z = np.concatenate([np.asarray(fwd(new, prep(jnp.asarray(images[i:i + 4])))[0])
                      for i in (0, 4)])
  add_on = "add_on_layers" if variant == "protopnet" else "add_on_layers_support"
  raw = np.asarray(model.apply(
      v, prep(jnp.asarray(images)),
      method=lambda m, x: getattr(m, add_on)(m.features(x))))  # the features distances use
  key = "prototypes" if variant == "protopnet" else "prototypes_support"
  protos = np.asarray(new["params"][key]["prototype_vectors"])
  old = np.asarray(v["params"][key]["prototype_vectors"])
  for j in range(4):
    img, (r, c) = info["image"][j], info["position"][j]
    assert labels[img] == j // 2  # an image of the prototype's class
    np.testing.assert_array_equal(protos[j], z[img, r, c])  # exactly a training patch
    # ... and the nearest one to the old prototype among the class's patches.
    cand = raw[labels == j // 2].reshape(-1, 3)
    if variant == "protopnet":  # squared L2; the prototype is the raw patch
      d = ((cand - old[j]) ** 2).sum(-1)
    else:  # ST-ProtoPNet: projection on raw features; the prototype is the normalized patch
      d = -(cand @ (old[j] / np.linalg.norm(old[j])))
      np.testing.assert_allclose(protos[j], raw[img, r, c] / np.linalg.norm(raw[img, r, c]),
                                 rtol=1e-5)
    np.testing.assert_allclose(d.min(), info["distance"][j], rtol=1e-4, atol=1e-5)
    y0, y1, x0, x1 = info["box"][j]
    assert 0 <= y0 < y1 <= 8 and 0 <= x0 < x1 <= 8
