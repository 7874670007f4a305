r"""Delayed robustness on CIFAR-10: adversarial accuracy and local complexity while training.

  python -m jaxdl.train --config configs/grok_cifar10_cnn.py --workdir /tmp/grok_cifar10
  python -m jaxdl.train --config configs/grok_cifar10_cnn.py:cnn --workdir /tmp/grok_cifar10_cnn
  python tools/plot_grokking.py /tmp/grok_cifar10 --out docs/figures/grok_cifar10.png

Humayun, Balestriero & Baraniuk, "Deep Networks Always Grok and Here is Why" (ICML 2024), Fig. 1;
reference AhmedImtiazPrio/grok-adversarial (`configs.py::config_resnet18_cifar10`,
`train_resnet18_cifar10.py`): a pre-activation ResNet-18 of width 16 without BatchNorm, Adam
(AdamW with weight decay 0) lr 1e-3, batch 256, no augmentation, cross-entropy, 5e5 steps with
statistics at 50 log-spaced steps (logspace(0, 5.7, 50)). Local complexity on 1024 points with
40 vertices (P = 20) at r = 0.005 in the normalized input space, on training, test and random
points. PGD: 10 steps, random start, L-inf eps 8/255 with step 2/255 in pixel units (the
repository's code uses eps 50/255, step 4/255 in normalized units, about 10/255 and 0.8/255 in
pixels; its comment says 8/255 and 2/255), on 512 test images.

Variants: `:cnn` swaps the ResNet for a small plain ReLU CNN without BatchNorm (three 3x3
conv + 2x2 max-pool stages of 16/32/64 channels, a 64-unit dense layer; the paper also shows
delayed robustness for CNNs), 1e4 steps and lighter probes (LC on 128 points, PGD on 256,
also at eps 1/255 and 2/255), sized for a CPU; `:runlocal` is a smoke run.
"""

import ml_collections

from jaxdl.train.defaults import default_config


def get_config(arg=None):
  c = default_config()
  c.seed = 0
  c.model.name = "preact_resnet18"
  c.model.width = 16
  c.model.use_bn = False
  c.dataset.name = "cifar10"
  c.dataset.augment = "none"
  c.batch_size = 256
  c.eval_batch_size = 1000
  c.num_train_steps = 500_000
  c.loss = "cross_entropy"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 0.0
  c.log_every_steps = 500
  c.eval_schedule = "log"
  c.num_eval_points = 50
  c.checkpoint_every_steps = 10_000
  c.probes = "grok_accuracy,local_complexity,adversarial"
  c.probe_kwargs.accuracy_max_points = 10_000
  c.probe_kwargs.lc_radii = (0.005,)
  c.probe_kwargs.lc_num_directions = 20
  c.probe_kwargs.lc_num_points = 1024
  c.probe_kwargs.lc_sets = "train,test,random"
  c.probe_kwargs.adv_eps = 8 / 255
  c.probe_kwargs.adv_step_size = 2 / 255
  c.probe_kwargs.adv_num_steps = 10
  c.probe_kwargs.adv_num_points = 512
  c.probe_kwargs.adv_space = "pixel"
  if arg in ("cnn", "runlocal"):
    c.model = ml_collections.ConfigDict({"name": "cnn", "features": (16, 32, 64), "dense": (64,),
                                 "use_bn": False, "global_pool": False})
    c.num_train_steps = 10_000
    c.num_eval_points = 30
    c.eval_batch_size = 2000
    c.probe_kwargs.accuracy_max_points = 2000
    c.probe_kwargs.lc_num_points = 128
    c.probe_kwargs.adv_num_points = 256
    # A CPU run stops long before robustness at 8/255 can appear (it stays at 0 for 1e4+
    # steps); PGD at 1/255 and 2/255 shows where the robust accuracy is heading.
    c.probe_kwargs.adv_extra_eps = (1 / 255, 2 / 255)
  if arg == "runlocal":
    c.model.features = (8, 16)
    c.model.dense = (32,)
    c.batch_size = 32
    c.num_train_steps = 4
    c.num_eval_points = 2
    c.log_every_steps = 2
    c.checkpoint_every_steps = 4
    c.dataset.eval_split = "test"
    c.probe_kwargs.accuracy_max_points = 200
    c.probe_kwargs.lc_num_points = 8
    c.probe_kwargs.lc_num_directions = 3
    c.probe_kwargs.adv_num_points = 16
    c.probe_kwargs.adv_num_steps = 2
  return c
