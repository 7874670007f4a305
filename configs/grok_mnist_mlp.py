r"""Grokking on MNIST: an MLP with large initialization trained on 1000 images.

  python -m jaxdl.train --config configs/grok_mnist_mlp.py --workdir /tmp/grok_mnist_mlp
  python tools/plot_grokking.py /tmp/grok_mnist_mlp --out docs/figures/grok_mnist_mlp.png

Humayun, Balestriero & Baraniuk, "Deep Networks Always Grok and Here is Why" (ICML 2024), MNIST
setting after Liu et al., "Omnigrok" (ICLR 2023); reference AhmedImtiazPrio/grok-adversarial
(`configs.py::config_base_mnist_mlp`, `train_mlp_mnist.py`): 1000 training images, a ReLU MLP of
width 200 and depth 4 (four Linear layers: 784-200-200-200-10), PyTorch's default
initialization times a large scale (8, Omnigrok's MNIST value; the repository's default is 1),
MSE loss on one-hot targets, AdamW lr 1e-3 weight decay 0.01, batch 200, 1e5 steps. Inputs in
[0, 1]. Local complexity at log-spaced steps with 50 vertices (P = 25) on the training, test
and random points, logits counted as a layer, as the reference's hooks on every Linear.
Offline only the MNIST test set exists: the 1000 training images come from it and the other
9000 are the test set (dataset `mnist_grok`).

`:runlocal` is a CPU smoke run (a few hundred steps, a few LC points).
"""

from jaxdl.train.defaults import default_config


def get_config(arg=None):
  c = default_config()
  c.seed = 0
  c.model.name = "mlp"
  c.model.features = (200, 200, 200)
  c.model.activation = "relu"
  c.model.weight_init = "torch"
  c.model.init_scale = 8.0
  c.model.sow_logits = True
  c.dataset.name = "mnist_grok"
  c.dataset.kwargs.num_train = 1000
  c.dataset.kwargs.seed = 0
  c.dataset.augment = "none"
  c.batch_size = 200
  c.eval_batch_size = 1000
  c.num_train_steps = 100_000
  c.loss = "mse"
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 0.01
  c.log_every_steps = 500
  c.eval_schedule = "log"
  c.num_eval_points = 60
  c.checkpoint_every_steps = 10_000
  c.probes = "grok_accuracy,local_complexity"
  c.probe_kwargs.lc_radii = (0.05, 0.5, 5.0)
  c.probe_kwargs.lc_num_directions = 25
  c.probe_kwargs.lc_num_points = 1000
  c.probe_kwargs.lc_sets = "train,test,random"
  if arg == "runlocal":
    c.num_train_steps = 200
    c.num_eval_points = 4
    c.log_every_steps = 50
    c.checkpoint_every_steps = 100
    c.probe_kwargs.lc_radii = (0.5,)
    c.probe_kwargs.lc_num_directions = 4
    c.probe_kwargs.lc_num_points = 32
    c.probe_kwargs.lc_sets = "train,test,random,boundary"
    c.probe_kwargs.accuracy_max_points = 500
  return c
