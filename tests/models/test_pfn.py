"""Tests for the PFN transformer (jaxdl/models/pfn.py): the attention structure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import errors, models


@pytest.fixture(scope="module")
def setup():
  model = models.create("pfn_small", num_classes=16, num_layers=2)
  x = jax.random.normal(jax.random.key(1), (2, 12, 3))
  y = jax.random.normal(jax.random.key(2), (2, 12))
  nc = jnp.array([5, 0])
  variables = model.init(jax.random.key(0), {"x": x, "y": y, "num_context": nc})
  apply = jax.jit(lambda v, x, y, nc: model.apply(v, {"x": x, "y": y, "num_context": nc}))
  return apply, variables, x, y, nc


def test_permuting_context_rows_leaves_predictions_unchanged(setup):
  apply, v, x, y, nc = setup
  out = apply(v, x, y, nc)
  perm = jnp.array([3, 0, 4, 2, 1] + list(range(5, 12)))
  out_p = apply(v, x[:, perm], y[:, perm], nc)
  np.testing.assert_allclose(out_p[0, 5:], out[0, 5:], atol=1e-5)
  # Context outputs are permuted along with the rows (equivariance).
  np.testing.assert_allclose(out_p[0, :5], out[0, perm[:5]], atol=1e-5)


def test_queries_do_not_influence_each_other(setup):
  apply, v, x, y, nc = setup
  out = apply(v, x, y, nc)
  # Change query row 8's input and every query's target: only row 8's output may change.
  x2 = x.at[:, 8].set(7.0)
  y2 = y.at[:, 5:].set(-3.0)
  out2 = apply(v, x2, y2, nc)
  others = [i for i in range(5, 12) if i != 8]
  np.testing.assert_allclose(out2[0, others], out[0, others], atol=1e-6)
  np.testing.assert_allclose(out2[0, :5], out[0, :5], atol=1e-6)  # Context never sees queries.
  assert np.abs(out2[0, 8] - out[0, 8]).max() > 1e-3
  # Permuting the queries permutes their outputs.
  perm = jnp.array(list(range(5)) + [11, 10, 9, 8, 7, 6, 5])
  out_p = apply(v, x[:, perm], y[:, perm], nc)
  np.testing.assert_allclose(out_p[0, 5:], out[0, perm[5:]], atol=1e-5)


def test_context_changes_predictions_and_empty_context_is_finite(setup):
  apply, v, x, y, nc = setup
  out = apply(v, x, y, nc)
  out_y = apply(v, x, y.at[:, 2].add(1.0), nc)
  assert np.abs(out_y[0, 5:] - out[0, 5:]).max() > 1e-4  # Context targets matter.
  # Dataset 1 has no context: all outputs finite and each depends only on its own x.
  assert np.all(np.isfinite(out[1]))
  single = apply(v, x[1:, 3:4], y[1:, 3:4], jnp.array([0]))
  np.testing.assert_allclose(single[0, 0], out[1, 3], atol=1e-5)


def test_bad_inputs_give_one_line_errors(setup):
  _, v, x, y, nc = setup
  model = models.create("pfn_small", num_classes=16, num_layers=2)
  with pytest.raises(errors.ShapeError, match="dict") as e:
    model.apply(v, x)
  assert "\n" not in str(e.value)
  with pytest.raises(errors.ShapeError, match="y"):
    model.apply(v, {"x": x, "y": y[:, :3], "num_context": nc})


def test_context_rows_restriction_matches_full_attention(setup):
  apply, v, x, y, nc = setup
  model = models.create("pfn_small", num_classes=16, num_layers=2)
  full = model.apply(v, {"x": x, "y": y, "num_context": nc})
  part = model.apply(v, {"x": x, "y": y, "num_context": nc}, context_rows=6)
  np.testing.assert_allclose(part, full, atol=1e-5)
