r"""ProtoPNet on mnist_parts (the part-annotated dataset of jaxdl.data.parts), a CPU run.

  python -m jaxdl.train --config configs/parts_protopnet.py --workdir /tmp/parts_protopnet

The ProtoPNet schedule of configs/cub_protopnet_resnet34.py, shrunk for 2 CPU cores: a small
BatchNorm CNN backbone (8x8 last feature map on 64x64 images), 10 prototypes of dim 64 per
class, 3,000 training images, 8 epochs (2 warm-up), one push after the last epoch followed by
5 last-layer epochs (sized for a shared 2-core CPU). `:small`: a (8, 16, 32, 32) backbone,
1,500 images, 5 epochs (1 warm-up). Consistency and stability on the 1,000 test images at the end
(box half-size 10 = 36 * 64 / 224).
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
  c = base.parts_setting(base.base_config(), arg)
  c.model.prototype_dim = 64
  c.model.backbone_kwargs = dict(features=(16, 32, 64, 64), convs_per_stage=1, use_bn=True)
  c.num_train_examples = 3000
  c.batch_size = 50
  c.num_epochs = 8
  c.warm_epochs = 2
  c.joint_lr_step = 5
  c.push_epochs = (7,)
  c.last_layer_epochs = 5
  if arg == "small":
    c.model.backbone_kwargs = dict(features=(8, 16, 32, 32), convs_per_stage=1, use_bn=True)
    c.num_train_examples, c.num_epochs, c.warm_epochs, c.push_epochs = 1500, 5, 1, (4,)
  if arg == "runlocal":
    c = base.parts_setting(c, arg)
    c.num_epochs, c.warm_epochs, c.push_epochs, c.last_layer_epochs = 2, 1, (1,), 1
  return c
