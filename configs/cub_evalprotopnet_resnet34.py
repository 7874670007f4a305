r"""EvalProtoPNet (SDFA + SA) on CUB-200-2011 with ResNet-34: hqhQAQ/EvalProtoPNet's settings.

  python -m jaxdl.train --config configs/cub_evalprotopnet_resnet34.py --workdir /tmp/cub_eval

2000 prototypes of dim 64 (10 per class), add-on conv1x1-Sigmoid, cosine distances for the
cluster (0.8) and separation (-0.08) losses, projections into the score-aggregation module,
orthogonality 1e-4, SDFA 0.5 (threshold 0.1, shallow features = ResNet layer1, after the
warm-up), 12 epochs: 5 warm-up, then joint with StepLR (3 epochs x 0.2); Adam, backbone 1e-4,
add-on and prototypes 3e-3, SA weights 1e-6; prototypes re-normalized after every step; no
push, no last layer. `:runlocal` is a CPU smoke run on mnist_parts.
"""

import importlib.util
from pathlib import Path


def _load(name):
  spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


base = _load("cub_protopnet_resnet34")


def get_config(arg=None):
  c = base.base_config()
  c.model.name = "evalprotopnet"
  c.model.prototype_dim = 64
  c.model.shallow_layer = "layer1_2"   # resnet34's last layer1 block
  c.num_epochs = 12
  c.warm_epochs = 5
  c.push_epochs = ()
  c.last_layer_epochs = 0
  c.joint_lr_step = 3
  c.joint_lr_gamma = 0.2
  c.lr.activation_weight = 1e-6
  c.coefs.l1 = 0.0
  c.coefs.orth = 1e-4
  c.coefs.consis = 0.5
  c.normalize_prototypes = True
  if arg == "runlocal":
    c = base.parts_setting(c, arg)
    c.model.shallow_layer = "stage1_bn0"
    c.num_epochs = 2
    c.warm_epochs = 1
  return c
