r"""DenseNet-BC-100 (k=12) on CIFAR-10 with standard augmentation: Huang et al. 2017 (C10+).

  python -m jaxdl.train --config configs/cifar10_densenet_bc100.py --workdir /tmp/densenet_bc100
  python -m jaxdl.train --config configs/cifar10_densenet_bc100.py:runlocal --workdir /tmp/d

The paper's recipe (Sec. 4.2 and the authors' Torch code): SGD with Nesterov momentum 0.9
(dampening 0), batch 64, 300 epochs, learning rate 0.1 divided by 10 at 50% and 75% of
training, weight decay 1e-4 on all parameters (coupled L2, as Torch's optim.sgd), no
dropout with augmentation (4-pixel padded random crops + horizontal flips), per-channel
mean/std normalization. Paper: 4.51% test error (95.49% accuracy) on C10+.
`memory_efficient=True` (same values, less memory, see BENCHMARKS.md) is a model override:
`--config.model.memory_efficient=True`. `:runlocal` is a CPU smoke run (a 3x2-layer
DenseNet-BC, a few steps).
"""

from jaxdl import errors
from jaxdl.train.defaults import default_config


def get_config(arg=None):
  c = default_config()
  c.model.name = "densenet_bc_100_k12"
  c.model.drop_rate = 0.0
  c.model.proj_drop_rate = 0.0  # The paper uses 0.2 only without data augmentation.
  c.model.memory_efficient = False
  c.dataset.name = "cifar10"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"
  c.dataset.augment = "crop_flip"
  c.batch_size = 64
  c.eval_batch_size = 1000
  c.num_epochs = 300.0
  c.loss = "cross_entropy"
  c.label_smoothing = 0.0
  c.mixup_alpha = 0.0
  c.cutmix_alpha = 0.0
  c.optimizer.name = "momentum"
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.learning_rate = 0.1
  c.optimizer.schedule = "step"
  c.optimizer.decay_boundaries = (0.5, 0.75)
  c.optimizer.decay_factor = 0.1
  c.optimizer.warmup_steps = 0
  c.optimizer.weight_decay = 1e-4
  c.optimizer.weight_decay_on = "all"
  c.log_every_steps = 200
  c.eval_every_steps = 3910  # About 5 epochs of 782 steps.
  c.checkpoint_every_steps = 3910
  if arg == "runlocal":
    c.model.block_config = (2, 2, 2)
    c.batch_size = 16
    c.eval_batch_size = 500
    c.num_epochs = 0.0
    c.num_train_steps = 6
    c.log_every_steps = 2
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 3
  elif arg:
    raise errors.ConfigError(f"unknown config variant {arg!r}; use 'runlocal' or nothing.")
  return c
