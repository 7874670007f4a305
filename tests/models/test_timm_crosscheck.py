"""jaxdl vs timm (PyTorch) on the same random weights and inputs, float32, eval mode.

Needs torch + timm + jax in one environment (skipped otherwise, e.g. in CI):

  PYTHONPATH=. /work/torchvenv/bin/python -m pytest -q -m "torch or not torch" \
      tests/models/test_timm_crosscheck.py

The state dict is timm's own (its keys and shapes) filled with seeded random values, so
BatchNorm running statistics, layer scales and biases are all non-trivial.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import jax  # noqa: E402

import jaxdl.models as models  # noqa: E402
from jaxdl.models import timm_convert as tc  # noqa: E402

pytestmark = pytest.mark.torch

# (model, input side, running-variance range: larger for deep residual nets, see
# random_timm_state_dict). vgg11 at 32x32 exercises the adaptive pooling to 7x7.
CASES = [("densenet121", 64, (0.5, 1.5)), ("rdnet_tiny", 64, (0.5, 1.5)),
         ("resnet50", 64, (0.5, 4.0)), ("mobilenetv2_100", 64, (0.5, 1.5)),
         ("resnet18", 64, (0.5, 2.5)), ("vgg11", 32, (0.5, 1.5)),
         ("densenet161", 64, (0.5, 1.5)), ("rdnet_small", 64, (0.5, 1.5))]


@pytest.mark.parametrize("name,res,var_range", CASES)
def test_logits_match_timm(name, res, var_range):
  if name not in models.list_models():
    pytest.skip(f"{name} is not registered in this checkout")
  torch.manual_seed(0)
  tmodel = timm.create_model(name, pretrained=False).eval()
  spec = [(k, tuple(v.shape)) for k, v in tmodel.state_dict().items()]
  sd = tc.random_timm_state_dict(spec, seed=1, var_range=var_range)
  tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  x = tc.golden_input(1, 2, res)
  with torch.no_grad():
    want = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  # Convert from the torch tensors themselves (the documented path).
  variables = models.load_timm_state_dict(name, tmodel.state_dict())
  got = np.asarray(jax.jit(lambda v, x: models.create(name).apply(v, x))(variables, x))
  diff = np.abs(got - want).max()
  print(f"{name}: max |logit| {np.abs(want).max():.3f}, max abs diff {diff:.2e}")
  assert np.abs(want).max() > 1.0
  assert diff < 1e-4
