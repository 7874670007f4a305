r"""ProtoPNet on CIFAR-10 with a CIFAR ResNet backbone.

  python -m jaxdl.train --config configs/cifar10_protopnet.py --workdir /tmp/cifar10_protopnet
  python -m jaxdl.train --config configs/cifar10_protopnet.py:cpu --workdir /tmp/c10pp_cpu

ProtoPNet's losses and schedule (configs/cub_protopnet_resnet34.py) on 32x32 CIFAR-10 images
with standard crop+flip augmentation: 10 prototypes of dim 64 per class, batch 128, one
warm-up epoch, joint epochs (backbone lr 1e-3: it is trained from scratch), pushes after
epochs 10 and 20 each followed by 20 last-layer epochs.
The backbone is `resnet20` (He et al. 2016, Sec. 4.2: an 8x8x64 last feature map for 32x32
images; the ImageNet ResNets reduce 32x32 inputs to 1x1). `:cpu` is the short run of
RESULTS.md (a random 5,000 training images, 2 epochs, one push); `:runlocal` a smoke run.
"""

import importlib.util
from pathlib import Path


def _load(name):
  spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  c = _load("cub_protopnet_resnet34").base_config()
  c.model.backbone = "resnet20"
  c.model.backbone_kwargs = {}
  c.model.prototype_dim = 64
  c.dataset.name = "cifar10"
  c.dataset.augment = "crop_flip"
  c.interpretability = None
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_epochs = 21
  c.push_epochs = (10, 20)
  # The backbone starts from scratch here (the CUB configs fine-tune an ImageNet ResNet at
  # 1e-4): Adam's usual 1e-3 for it, one warm-up epoch (a frozen random backbone teaches the
  # prototypes little) and the joint lr divided by 10 every 10 epochs instead of 5.
  c.lr.features = 1e-3
  c.warm_epochs = 1
  c.joint_lr_step = 10
  if arg == "cpu":
    c.num_train_examples = 5000
    c.num_epochs, c.push_epochs, c.last_layer_epochs = 2, (1,), 3
    c.log_every_steps = 20
  if arg == "runlocal" or arg == "cnn":
    c.model.backbone = "cnn"
    c.model.backbone_kwargs = dict(features=(32, 64, 128), convs_per_stage=2, use_bn=True)
  if arg == "runlocal":
    c.num_train_examples = 256
    c.batch_size = 32
    c.max_steps_per_epoch = 2
    c.num_epochs, c.warm_epochs, c.push_epochs, c.last_layer_epochs = 2, 1, (1,), 1
  return c
