"""NUTS through NumPyro on a tiny BNN: converged chains in function space."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import models
from jaxdl.inference import hmc, priors
from jaxdl.inference.bnn import BNN


# ~35 CPU-seconds, almost all NumPyro/XLA compilation: slow (result in RESULTS.md).
@pytest.mark.slow
def test_nuts_on_a_tiny_bnn_reaches_rhat_below_1_05():
  model = models.create("mlp", features=(3,), activation="tanh", num_classes=1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))["params"]
  prior = priors.gaussian(params, init_std=1.0)
  bnn = BNN(lambda p, x: model.apply({"params": p}, x), prior, prior.init(),
            likelihood="gaussian", noise_variance=0.05)
  x = jnp.linspace(-2, 2, 30)[:, None]
  y = 0.6 * x[:, 0] + 0.1 * jax.random.normal(jax.random.key(1), (30,))
  x_diag = jnp.array([[-1.5], [0.0], [1.5]])
  res = hmc.run_nuts(jax.random.key(2), bnn, {"inputs": x, "targets": y}, num_warmup=150,
                     num_samples=150, num_chains=4, max_tree_depth=8,
                     diagnostic_inputs=x_diag)
  assert res.functions.shape == (4, 150, 3, 1)
  assert np.all(res.r_hat_functions < 1.05), res.r_hat_functions
  assert np.all(res.ess_functions > 100)
  # The posterior mean function fits the data's slope.
  mean = res.functions.mean((0, 1))[:, 0]
  np.testing.assert_allclose(mean, [-0.9, 0.0, 0.9], atol=0.2)
