"""Local complexity: exact counts on known hyperplanes, a float64 loop reference, paths agree."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import errors
from jaxdl.analysis import local_complexity, random_directions
from jaxdl.analysis.local_complexity import (decision_boundary_points, summarize,
                                             uses_shared_first_layer)
from jaxdl.models.cnn import CNN
from jaxdl.models.mlp import MLP


# --- a 1-hidden-layer ReLU net in 2D with hand-set hyperplanes -------------------------------

# Lines w_i . x + b_i = 0.
_W = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0], [-0.5, 3.0]])
_B = np.array([-0.3, 0.2, -0.5, 0.1, 0.7])
_TOY = MLP(num_classes=1, features=(len(_W),))
_TOY_VARS = {"params": {"dense_0": {"kernel": jnp.asarray(_W.T, jnp.float32),
                                    "bias": jnp.asarray(_B, jnp.float32)},
                        "head": {"kernel": jnp.ones((len(_W), 1)), "bias": jnp.zeros((1,))}}}


def _exact_cuts(points, frame, r):
  # A line cuts the frame's convex hull {x + r sum_p t_p v_p : sum |t_p| <= 1} iff
  # |w.x + b| < r max_p |w.v_p| (the support function of the cross-polytope).
  margin = np.abs(points @ _W.T + _B)                    # [N, H]
  reach = r * np.max(np.abs(frame @ _W.T), axis=0)       # [H]
  return margin < reach


@pytest.mark.parametrize("angle", [0.0, 0.7])
def test_toy_counts_are_exact(angle):
  rng = np.random.default_rng(0)
  points = rng.uniform(-1.5, 1.5, size=(400, 2))
  c, s = np.cos(angle), np.sin(angle)
  frame = np.array([[c, s], [-s, c]])
  r = 0.25
  expected = _exact_cuts(points, frame, r)
  lc = local_complexity(_TOY.apply, _TOY_VARS, jnp.asarray(points, jnp.float32), radius=r,
                        directions=jnp.asarray(frame, jnp.float32))
  np.testing.assert_array_equal(np.asarray(lc["per_layer"]["act_0"]), expected.sum(1))
  np.testing.assert_array_equal(np.asarray(lc["total"]), expected.sum(1))
  # The frame is the same hull with its centre: the centre changes nothing.
  lc_c = local_complexity(_TOY.apply, _TOY_VARS, jnp.asarray(points, jnp.float32), radius=r,
                          directions=jnp.asarray(frame, jnp.float32), include_center=True)
  np.testing.assert_array_equal(np.asarray(lc_c["total"]), expected.sum(1))
  # A wide range of counts, so the check is not trivially all zeros.
  assert len(np.unique(expected.sum(1))) >= 3


def test_toy_point_on_a_line_vertex():
  # Pre-activation exactly 0 at one vertex and positive at others counts (torch.sign).
  # The +e1 vertex (0.5, 0) lies exactly on x1 + x2 = 0.5, the rest of the frame below it:
  # the line touches the frame without cutting it strictly, and counts once.
  x = jnp.asarray([[0.25, 0.0]], jnp.float32)
  strict = _exact_cuts(np.asarray(x), np.eye(2), 0.25)[0]
  assert not strict[2]
  lc = local_complexity(_TOY.apply, _TOY_VARS, x, radius=0.25, directions=jnp.eye(2))
  assert int(lc["total"][0]) == int(strict.sum()) + 1


# --- an MLP against a plain float64 loop ---------------------------------------------------

def _loop_lc(params, points, frame, r, include_center):
  """Per point, per vertex, a numpy forward pass; per layer, neurons with mixed signs."""
  layers = [params[f"dense_{i}"] for i in range(len(params) - 1)] + [params["head"]]
  counts = np.zeros((len(points), len(layers)), np.int64)
  for n, x in enumerate(points):
    verts = [x + r * v for v in frame] + [x - r * v for v in frame]
    if include_center:
      verts.append(x)
    signs = [[] for _ in layers]
    for v in verts:
      h = v.reshape(-1)
      for li, layer in enumerate(layers):
        z = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        signs[li].append(np.sign(z))
        h = np.maximum(z, 0.0)
    for li in range(len(layers)):
      s = np.stack(signs[li])
      counts[n, li] = np.sum(np.any(s != s[:1], axis=0))
  return counts


@pytest.fixture(scope="module")
def mlp64():
  with jax.enable_x64(True):
    model = MLP(num_classes=3, features=(16, 12), sow_logits=True, weight_init="torch",
                init_scale=3.0, dtype=jnp.float64, param_dtype=jnp.float64)
    x = jax.random.uniform(jax.random.key(1), (24, 4, 5, 1), jnp.float64)
    variables = model.init(jax.random.key(0), x[:2])
  return model, variables, x


@pytest.mark.parametrize("include_center", [False, True])
def test_mlp_matches_float64_loop(mlp64, include_center):
  model, variables, x = mlp64
  with jax.enable_x64(True):
    frame = random_directions(jax.random.key(3), 6, x.shape[1:], jnp.float64)
    np.testing.assert_allclose(np.asarray(frame).reshape(6, -1) @ np.asarray(frame).reshape(
        6, -1).T, np.eye(6), atol=1e-6)
    expected = _loop_lc(variables["params"], np.asarray(x), np.asarray(frame), 0.3,
                        include_center)
    assert uses_shared_first_layer(model.apply, variables, x)
    for method in ("auto", "vertices"):
      lc = local_complexity(model.apply, variables, x, radius=0.3, directions=frame,
                            include_center=include_center, method=method, chunk_size=5)
      got = np.stack([np.asarray(lc["per_layer"][k]) for k in ("act_0", "act_1", "logits")], 1)
      np.testing.assert_array_equal(got, expected)
      np.testing.assert_array_equal(np.asarray(lc["total"]), expected.sum(1))
  assert expected.sum() > 0


def test_per_point_directions_match_loop(mlp64):
  model, variables, x = mlp64
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.key(4), x.shape[0])
    frames = jax.vmap(lambda k: random_directions(k, 3, x.shape[1:], jnp.float64))(keys)
    lc = local_complexity(model.apply, variables, x, radius=0.3, directions=frames)
    for n in (0, 7, 23):
      expected = _loop_lc(variables["params"], np.asarray(x[n:n + 1]), np.asarray(frames[n]),
                          0.3, False)
      assert int(lc["total"][n]) == expected.sum()


def test_random_frame_is_shared_and_seeded(mlp64):
  model, variables, x = mlp64
  with jax.enable_x64(True):
    a = local_complexity(model.apply, variables, x, radius=0.3, num_directions=5,
                         rng_key=jax.random.key(7))
    frame = random_directions(jax.random.key(7), 5, x.shape[1:], jnp.float64)
    b = local_complexity(model.apply, variables, x, radius=0.3, directions=frame)
  np.testing.assert_array_equal(np.asarray(a["total"]), np.asarray(b["total"]))


# --- other architectures: the shared-first-layer path equals running every vertex ----------

class _InputReuse(nn.Module):
  """The input is read again after the first layer (a skip from the input)."""

  @nn.compact
  def __call__(self, x, train=False):
    flat = x.reshape(x.shape[0], -1)
    h = nn.Dense(8)(flat)
    self.sow("preactivations", "a", h)
    z = nn.Dense(4)(nn.relu(h)) + 3.0 * flat[:, :4]
    self.sow("preactivations", "b", z)
    return nn.relu(z)


class _SquaredInput(nn.Module):
  """A nonlinear map before the first layer: the shortcut would be wrong."""

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Dense(8)(jnp.square(x.reshape(x.shape[0], -1)))
    self.sow("preactivations", "a", h)
    return nn.Dense(2)(nn.relu(h))


@pytest.mark.parametrize("model,shape,expect_fast", [
    (CNN(features=(3, 4), dense=(5,)), (6, 6, 2), True),
    (_InputReuse(), (6,), True),
    (_SquaredInput(), (6,), False),
])
def test_shared_first_layer_equals_vertices(model, shape, expect_fast):
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(2), (10,) + shape, jnp.float64)
    variables = model.init(jax.random.key(0), x[:2])
    variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), variables)
    assert uses_shared_first_layer(model.apply, variables, x) == expect_fast
    kw = dict(radius=0.5, num_directions=4, rng_key=jax.random.key(5))
    a = local_complexity(model.apply, variables, x, **kw)
    b = local_complexity(model.apply, variables, x, method="vertices", **kw)
  assert set(a["per_layer"]) == set(b["per_layer"])
  for k in a["per_layer"]:
    np.testing.assert_array_equal(np.asarray(a["per_layer"][k]), np.asarray(b["per_layer"][k]))
  assert int(np.sum(a["total"])) > 0


def test_float32_paths_agree_on_mlp():
  # In float32 the shortcut rounds differently (W x + r W v vs W (x + r v)), which can only
  # flip a sign where a pre-activation is within rounding of 0: all but a handful agree.
  model = MLP(features=(64, 64), sow_logits=True, weight_init="torch")
  x = jax.random.uniform(jax.random.key(1), (200, 10, 10, 1))
  variables = model.init(jax.random.key(0), x[:2])
  kw = dict(radius=0.1, num_directions=10)
  a = local_complexity(model.apply, variables, x, **kw)
  b = local_complexity(model.apply, variables, x, method="vertices", **kw)
  assert np.mean(np.asarray(a["total"]) == np.asarray(b["total"])) >= 0.99
  assert float(np.mean(np.asarray(a["total"]))) > 1.0
  s = summarize(a)
  assert set(s) == {"total", "act_0", "act_1", "logits"}


def test_radius_monotone_in_expectation():
  # A larger frame (same directions) contains the smaller one: counts can only grow.
  model = MLP(features=(32, 32), weight_init="torch")
  x = jax.random.uniform(jax.random.key(1), (50, 20))
  variables = model.init(jax.random.key(0), x[:2])
  frame = random_directions(jax.random.key(9), 5, (20,))
  small = local_complexity(model.apply, variables, x, radius=0.05, directions=frame)
  large = local_complexity(model.apply, variables, x, radius=0.5, directions=frame)
  # Per layer 0 the hull nesting makes this exact (hyperplanes of an affine map).
  assert np.all(np.asarray(large["per_layer"]["act_0"]) >= np.asarray(small["per_layer"]["act_0"]))
  assert np.mean(large["total"]) > np.mean(small["total"])


def test_decision_boundary_points():
  # Linear 2-class model: the boundary is the line w.x + b = 0 (logit difference).
  model = MLP(num_classes=2, features=())
  params = {"params": {"head": {"kernel": jnp.asarray([[1.0, -1.0], [2.0, 0.0]]),
                                "bias": jnp.asarray([0.5, 0.0])}}}
  diff = lambda x: (x @ np.array([[1.0, -1.0], [2.0, 0.0]]) + np.array([0.5, 0.0]))
  rng = np.random.default_rng(1)
  a = rng.normal(size=(64, 2)).astype(np.float32)
  b = rng.normal(size=(64, 2)).astype(np.float32)
  pts, valid = decision_boundary_points(model.apply, params, a, b, num_steps=30)
  la, lb = diff(a).argmax(1), diff(b).argmax(1)
  np.testing.assert_array_equal(np.asarray(valid), la != lb)
  d = diff(np.asarray(pts, np.float64))
  margin = np.abs(d[:, 0] - d[:, 1])
  assert np.all(margin[np.asarray(valid)] < 1e-5 * 30)
  assert np.sum(valid) > 10


def test_bad_inputs_raise_one_line_errors():
  x = jnp.zeros((4, 3))
  with pytest.raises(errors.ConfigError, match="num_directions or directions"):
    local_complexity(_TOY.apply, _TOY_VARS, x[:, :2], radius=0.1)
  with pytest.raises(errors.ConfigError, match="radius"):
    local_complexity(_TOY.apply, _TOY_VARS, x[:, :2], radius=0.0, num_directions=1)
  with pytest.raises(errors.ShapeError, match="directions must have shape"):
    local_complexity(_TOY.apply, _TOY_VARS, x[:, :2], radius=0.1, directions=jnp.eye(3))
  with pytest.raises(errors.ShapeError, match="between 1 and the input dimension"):
    local_complexity(_TOY.apply, _TOY_VARS, x[:, :2], radius=0.1, num_directions=3)
  with pytest.raises(errors.UnknownNameError):
    local_complexity(_TOY.apply, _TOY_VARS, x[:, :2], radius=0.1, num_directions=1,
                     method="fast")
