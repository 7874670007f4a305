r"""CIFAR-10 with a small VGG-style CNN (BatchNorm, 64-128-256 channels, global pooling).

  python -m jaxdl.train --config configs/cifar10_cnn.py --workdir /tmp/cifar10_cnn

Data: $JAXDL_DATA_DIR/cifar10 (the offline JPEG tarballs). Standard augmentation (4-pixel
padded random crops, horizontal flips), SGD with Nesterov momentum, cosine schedule.
`:runlocal` is a CPU smoke run of a few dozen steps.
"""

from jaxdl.train.defaults import default_config


def get_config(arg=None):
  c = default_config()
  c.model.name = "cnn_cifar"
  c.dataset.name = "cifar10"
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 30.0
  c.optimizer.name = "momentum"
  c.optimizer.nesterov = True
  c.optimizer.learning_rate = 0.05
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_epochs = 1.0
  c.optimizer.weight_decay = 5e-4
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  if arg == "runlocal":
    c.model.name = "cnn_small"
    c.batch_size = 64
    c.num_epochs = 0.0
    c.num_train_steps = 30
    c.eval_batch_size = 1000
    c.log_every_steps = 10
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 15
  return c
