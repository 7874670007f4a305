"""Receptive fields traced from the model against the textbook recurrence on its config."""

import jax
import jax.numpy as jnp
import pytest

from jaxdl import models
from jaxdl.efficiency import block_fields, receptive_fields
from jaxdl.efficiency import graph as G
from jaxdl.efficiency import patch_inference as P


def _shapes(model, shape):
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  return {k: v[k] for k in ("params", "batch_stats") if k in v}


def _expected_block_rf(model):
  """r, j after every block from the per-block lists: stem 3x3/2, then each block's depthwise
  kxk (stride s) adds (k - 1) * j (1x1 convs add nothing)."""
  r, j = 3, 2
  out = []
  for k, s in zip(model.kernel_sizes, model.strides):
    r += (k - 1) * j
    j *= s
    out.append((r, j))
  return out


@pytest.mark.parametrize("name", ["mobilenetv2_035", "mcunet_in3"])
def test_block_receptive_fields_match_the_recurrence(name):
  model = models.create(name)
  got = block_fields(model, _shapes(model, (1, 64, 64, 3)), (1, 64, 64, 3))
  assert [(b["rf"][0], b["jump"][0]) for b in got] == _expected_block_rf(model)
  assert all(b["rf"][0] == b["rf"][1] for b in got)


def test_cnn_layer_geometry_closed_form():
  # conv3 (r 3), maxpool 2/2 (r 4, j 2), conv3 (r 8), maxpool (r 10, j 4).
  model = models.create("cnn", features=(4, 8), dense=(8,))
  rows = receptive_fields(model, _shapes(model, (1, 16, 16, 1)), (1, 16, 16, 1))
  assert [(r.kind, r.kernel[0], r.stride[0], r.rf[0], r.jump[0]) for r in rows] == [
      ("conv", 3, 1, 3, 1), ("pool", 2, 2, 4, 2), ("conv", 3, 1, 8, 2), ("pool", 2, 2, 10, 4)]
  assert rows[0].padding == ((1, 1), (1, 1)) and rows[0].name == "stage0_conv0"


def test_patch_halo_equals_receptive_field():
  # Two algorithms on the same trace: the forward recurrence and the backward range walk.
  # With one output position per patch, the input patch is exactly the receptive field.
  model = models.create("mcunet_in0")
  shape = (1, 48, 48, 3)
  v = _shapes(model, shape)
  fields = block_fields(model, v, shape)
  g = G.trace(model, v, shape)
  for split in (1, 3, 5):
    hs = fields[split - 1]["out_shape"][1]
    plan = P.make_plan(g, split, hs)
    assert plan.patch == (1, 1)
    assert plan.ranges[g.input][0].length == fields[split - 1]["rf"][0]
