r"""The 1D regression example of Tran et al. (JMLR 2022, fig. 1; optbnn
notebooks/1D_regression_gaussian_prior.ipynb): a 3x50 tanh network whose Gaussian prior is
fitted to a GP (RBF, lengthscale 0.6, variance 1) on a grid of 200 points in [-6, 6], then
sampled with SGHMC.

  python -m jaxdl.train --config configs/toy1d_gp_prior.py --workdir /tmp/toy1d

`--config.prior=fixed_gaussian` for the N(0, 1) baseline; `:runlocal` is a smoke run.
"""

import importlib.util
from pathlib import Path


def _base():
  spec = importlib.util.spec_from_file_location(
      "uci_gp_prior", Path(__file__).with_name("uci_gp_prior.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  c = _base().get_config(arg)
  c.dataset = "toy1d"
  c.model.features = (50, 50, 50)
  c.gp.hyperprior = False
  c.gp.lengthscale = 0.6
  c.gp.variance = 1.0
  c.fit.measurement = "grid"
  c.fit.grid_min, c.fit.grid_max = -6.0, 6.0
  if arg != "runlocal":
    c.fit.num_iters = 800
    c.fit.num_points = 200
    c.fit.num_functions = 512
    c.fit.critic_steps = 1000
    c.fit.critic_lr = 0.08
    c.fit.prior_lr = 0.01
    c.sampler.thinning = 200
    c.sampler.num_samples = 30
  return c
