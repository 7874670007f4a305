r"""RDNet-T on ImageNet-1k: the authors' recipe (naver-ai/rdnet train_configs/rdnet.yaml).

  python -m jaxdl.train --config configs/imagenet_rdnet_tiny.py --workdir /tmp/rdnet_tiny
  python -m jaxdl.train --config configs/imagenet_rdnet_tiny.py:runlocal --workdir /tmp/r

Data: TFDS "imagenet2012", prepared beforehand (tfds.data_source, no TensorFlow).
Recipe: AdamW, lr 1e-3 at global batch 512 (4 GPUs x 64 x 2 accumulation steps), weight
decay 0.05 on kernels only (timm filters biases and norms), 300 epochs, 20 warm-up epochs,
cosine to 1e-6, label smoothing 0.1, mixup 0.8 / cutmix 1.0 (switch probability 0.5), drop
path 0.15, mixed precision. Paper / timm: 82.81% top-1.

Not in jaxdl's input pipeline yet (so a full run is not the paper's recipe): the ImageNet
train transform (random-resized crop 0.08-1 to 224, bicubic), RandAugment
rand-m9-mstd0.5-inc1, random erasing 0.25, and the eval transform (resize to 224 / 0.9,
center crop 224). Also timm warms up from 1e-4 (here from 0) and schedules per epoch.
`:runlocal` trains a small RDNet on CIFAR-10 for a few steps on CPU (ImageNet is not
available offline).
"""

from jaxdl import errors
from jaxdl.train.defaults import default_config


def get_config(arg=None):
  c = default_config()
  c.model.name = "rdnet_tiny"
  c.model.drop_path_rate = 0.15
  c.model.drop_rate = 0.0
  # True: one-pass LayerNorm variance; XLA:GPU compiles the step ~5x faster (step time on a
  # GPU not yet measured; docs/models.md).
  c.model.norm_fast_variance = False
  c.dtype = "bfloat16"
  c.dataset.name = "tfds:imagenet2012"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "validation"
  c.dataset.augment = "default"
  c.batch_size = 512
  c.eval_batch_size = 500
  c.num_epochs = 300.0
  c.loss = "cross_entropy"
  c.label_smoothing = 0.1
  c.mixup_alpha = 0.8
  c.cutmix_alpha = 1.0
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_epochs = 20.0
  c.optimizer.end_learning_rate_factor = 1e-3  # min_lr 1e-6.
  c.optimizer.weight_decay = 0.05
  c.optimizer.weight_decay_on = "kernels"
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.log_every_steps = 100
  c.eval_every_steps = 2502 * 5  # About 5 epochs of 2502 steps.
  c.checkpoint_every_steps = 2502
  if arg == "runlocal":
    c.dtype = "float32"
    c.dataset.name = "cifar10"
    c.dataset.eval_split = "test"
    c.dataset.augment = "crop_flip"
    # A three-stage RDNet (plain, ESE, ESE blocks) so that the smoke run compiles quickly.
    c.model.num_init_features = 32
    c.model.growth_rates = (16, 32, 32)
    c.model.num_blocks_list = (2, 1, 1)
    c.model.is_downsample_block = (False, True, True)
    c.model.block_types = ("Block", "BlockESE", "BlockESE")
    c.batch_size = 16
    c.eval_batch_size = 500
    c.num_epochs = 0.0
    c.num_train_steps = 6
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.warmup_steps = 2
    c.log_every_steps = 2
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 3
  elif arg:
    raise errors.ConfigError(f"unknown config variant {arg!r}; use 'runlocal' or nothing.")
  return c
