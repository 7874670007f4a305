r"""CIFAR-10 with a Bayesian CNN sampled by cyclical SGHMC (Zhang et al., ICLR 2020), with a
fixed N(0, 1/fan_in) prior or a Gaussian prior fitted to a GP on the images (Tran et al.,
JMLR 2022, sec. 5.4 use GP-induced priors for CNNs on CIFAR-10).

  python -m jaxdl.train --config configs/cifar10_bnn_sghmc.py --workdir /tmp/cifar_bnn
  python -m jaxdl.train --config configs/cifar10_bnn_sghmc.py --config.prior=gp_gaussian \
      --workdir /tmp/cifar_bnn_gp

The GP target is an RBF kernel on the flattened standardized images (lengthscale
sqrt(2 * 3072), variance 1), one independent GP per logit; measurement sets are random
batches of 64 training images. Cyclical SGHMC: 4 cycles of 50 epochs (batch 128), cosine
step size from eta = 1e-5 (lr 0.5 / N in csgmcmc's parametrization), friction 0.1 (momentum
0.9), the first 80% of each cycle without noise, 3 samples at the end of each cycle. Needs
an accelerator for the full run; `:runlocal` is a CPU smoke run on 512 images.
"""

import importlib.util
from pathlib import Path

import ml_collections


def _base():
  spec = importlib.util.spec_from_file_location(
      "uci_gp_prior", Path(__file__).with_name("uci_gp_prior.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  c = _base().get_config()
  c.trainer = "bnn_classification"
  c.dataset = "cifar10"
  c.num_train = 0          # 0: all 50,000 training images
  c.num_test = 0
  c.prior = "fixed_gaussian"
  c.model = ml_collections.ConfigDict({"name": "cnn", "features": (32, 64, 128),
                                       "dense": (256,), "num_classes": 10})
  c.prior_init.init_std = 1.0
  c.gp.hyperprior = False
  c.gp.lengthscale = 0.0    # sqrt(2 * 3072)
  c.gp.variance = 1.0
  c.fit.measurement = "batch"
  c.fit.num_points = 64
  c.fit.num_functions = 128
  c.fit.num_iters = 100
  c.fit.critic_steps = 100
  c.sampler = ml_collections.ConfigDict()
  c.sampler.batch_size = 128
  c.sampler.step_size = 1e-5
  c.sampler.friction = 0.1
  c.sampler.temperature = 1.0
  c.sampler.num_cycles = 4
  c.sampler.steps_per_cycle = 50 * 391
  c.sampler.exploration = 0.8
  c.sampler.samples_per_cycle = 3
  c.sampler.clip_norm = 0.0
  c.sampler.ece_bins = 15
  if arg == "runlocal":
    c.num_train, c.num_test = 512, 256
    c.model.features, c.model.dense = (8, 16), (32,)
    c.fit.num_iters, c.fit.critic_steps, c.fit.num_functions = 2, 5, 8
    c.fit.num_points, c.fit.critic_hidden, c.fit.chunk = 16, 32, 2
    c.sampler.batch_size = 32
    c.sampler.num_cycles, c.sampler.steps_per_cycle, c.sampler.samples_per_cycle = 2, 40, 2
  return c
