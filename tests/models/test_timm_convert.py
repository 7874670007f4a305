"""timm -> Flax conversion: golden logits from timm (no torch needed) and strict errors.

The golden files hold timm's own (key, shape) list, a seed and the logits timm computed in
eval mode for the seeded random state dict (tools/convert_timm.py --golden). Here the same
state dict is redrawn with numpy, converted, and jaxdl's logits must agree to 1e-4.
"""

from pathlib import Path

import jax
import numpy as np
import pytest

import jaxdl.models as models
from jaxdl import errors
from jaxdl.models import timm_convert as tc

GOLDEN = Path(__file__).parent / "golden"


def _golden(name):
  path = GOLDEN / f"timm_{name}.npz"
  if name not in models.list_models():
    pytest.skip(f"{name} is not registered in this checkout")
  g = np.load(path)
  spec = tc.spec_from_json(str(g["spec"]))
  sd = tc.random_timm_state_dict(spec, int(g["seed"]), tuple(float(v) for v in g["var_range"]))
  x = tc.golden_input(int(g["seed"]), int(g["batch"]), int(g["resolution"]))
  return sd, x, g["logits"]


@pytest.mark.parametrize("name,infer", [("densenet121", False), ("rdnet_tiny", False),
                                        ("resnet50", True), ("mobilenetv2_100", True)])
def test_golden_logits_match_timm(name, infer, abstract_variables, fast_jit):
  sd, x, want = _golden(name)
  # `infer`: build the target structure from the state dict alone (num_classes from the
  # classifier rows); otherwise pass the (cached) abstract variables.
  template = None if infer else abstract_variables(name)
  variables = models.load_timm_state_dict(name, sd, variables=template)
  assert set(variables) == ({"params"} if name.startswith("rdnet") else
                            {"params", "batch_stats"})
  model = models.create(name)
  got = fast_jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert got.shape == want.shape and got.dtype == np.float32
  assert np.abs(want).max() > 1.0  # the comparison is not between two near-zero arrays
  np.testing.assert_array_less(np.abs(np.asarray(got) - want), 1e-4)


def test_key_mapping_is_mechanical():
  assert tc.timm_key_to_path("layer1.0.downsample.0.weight") == (
      ("layer1_0", "downsample_0"), "weight")
  assert tc.timm_key_to_path("features.denseblock2.denselayer3.norm1.running_var",
                             "densenet") == (("denseblock2", "denselayer3", "norm1"),
                                             "running_var")
  assert tc.timm_key_to_path("dense_stages.3.2.dense_block1.layers.layers.5.fc.bias") == (
      ("dense_stages_3_2", "dense_block1", "layers", "layers_5", "fc"), "bias")
  assert tc.timm_key_to_path("features.8.weight", "vgg") == (("features_8",), "weight")


def test_random_state_dict_is_deterministic_per_key():
  spec = [("a.weight", (4, 3, 3, 3)), ("a.running_var", (4,)), ("a.num_batches_tracked", ())]
  one = tc.random_timm_state_dict(spec, 3)
  two = tc.random_timm_state_dict(list(reversed(spec)), 3)
  for k in one:
    np.testing.assert_array_equal(one[k], two[k])
  assert not np.array_equal(one["a.weight"], tc.random_timm_state_dict(spec, 4)["a.weight"])
  assert one["a.running_var"].min() >= 0.5




@pytest.fixture(scope="module")
def resnet20_state(abstract_variables):
  """Random resnet20 variables and the same values in torch layout (for a round trip)."""
  rng = np.random.default_rng(0)
  shapes = abstract_variables("resnet20", resolution=32)
  v = {c: jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(np.float32),
                                 shapes[c]) for c in ("params", "batch_stats")}
  sd = {}
  for coll, leaf_map in (("params", {"kernel": "weight", "scale": "weight", "bias": "bias"}),
                         ("batch_stats", {"mean": "running_mean", "var": "running_var"})):
    for path, a in jax.tree_util.tree_flatten_with_path(v[coll])[0]:
      keys = [p.key for p in path]
      mods = ".".join(k.replace("_", ".") if k.startswith("layer") else k for k in keys[:-1])
      a = np.asarray(a)
      if keys[-1] == "kernel":
        a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T
      sd[f"{mods}.{leaf_map[keys[-1]]}"] = a
  return v, sd


def test_round_trip_restores_every_variable(resnet20_state):
  v, sd = resnet20_state
  assert "layer2.0.conv1.weight" in sd and "fc.weight" in sd
  back = models.load_timm_state_dict("resnet20", sd)
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         {k: v[k] for k in ("params", "batch_stats")}, back)


def test_errors_name_the_offending_key(resnet20_state):
  _, sd = resnet20_state
  missing = {k: a for k, a in sd.items() if k != "layer3.2.bn2.running_mean"}
  with pytest.raises(errors.ConfigError, match="lacks 1 variable"):
    models.load_timm_state_dict("resnet20", missing)
  extra = dict(sd, **{"layer9.0.conv1.weight": np.zeros((1, 1, 1, 1))})
  with pytest.raises(errors.ConfigError, match="layer9.0.conv1.weight"):
    models.load_timm_state_dict("resnet20", extra)
  bad = dict(sd, **{"layer1.0.conv1.weight": np.zeros((16, 16, 5, 5), np.float32)})
  with pytest.raises(errors.ShapeError, match=r"layer1\.0\.conv1\.weight.*\(3, 3, 16, 16\)"):
    models.load_timm_state_dict("resnet20", bad)
  # num_classes follows the classifier: a 100-class head builds a 100-class model.
  c100 = dict(sd, **{"fc.weight": np.zeros((100, 64), np.float32),
                     "fc.bias": np.zeros((100,), np.float32)})
  assert models.load_timm_state_dict("resnet20", c100)["params"]["fc"]["kernel"].shape == (64, 100)
