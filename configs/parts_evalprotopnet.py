r"""EvalProtoPNet (SDFA + SA) on mnist_parts, a CPU run comparable to configs/parts_protopnet.py.

  python -m jaxdl.train --config configs/parts_evalprotopnet.py --workdir /tmp/parts_eval

EvalProtoPNet's losses and optimizer (configs/cub_evalprotopnet_resnet34.py) on the same
backbone, data and number of epochs as parts_protopnet.py (8 epochs, 2 warm-up, StepLR
3 x 0.2 as the paper's 12-epoch schedule; `:small` as parts_protopnet.py:small with
StepLR 2 x 0.2); SDFA's shallow features are the output of the
backbone's second stage (32x32, space-to-depth 4x4 onto the 8x8 grid), as ResNet's layer1.
"""

import importlib.util
from pathlib import Path


def _load(name):
  spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  base = _load("cub_protopnet_resnet34")
  c = _load("cub_evalprotopnet_resnet34").get_config()
  c = base.parts_setting(c, arg)
  c.model.prototype_dim = 64
  c.model.backbone_kwargs = dict(features=(16, 32, 64, 64), convs_per_stage=1, use_bn=True)
  c.model.shallow_layer = "stage1_bn0"
  c.num_train_examples = 3000
  c.batch_size = 50
  c.num_epochs = 8
  c.warm_epochs = 2
  c.joint_lr_step = 3
  if arg == "small":
    c.model.backbone_kwargs = dict(features=(8, 16, 32, 32), convs_per_stage=1, use_bn=True)
    c.num_train_examples, c.num_epochs, c.warm_epochs, c.joint_lr_step = 1500, 5, 1, 2
  if arg == "runlocal":
    c = base.parts_setting(c, arg)
    c.model.shallow_layer = "stage1_bn0"
    c.num_epochs, c.warm_epochs = 2, 1
  return c
