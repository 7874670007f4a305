"""NUTS and HMC for Bayesian neural networks through NumPyro.

Hoffman & Gelman, "The No-U-Turn Sampler" (JMLR 2014), and HMC (Neal 2011), as implemented
by NumPyro. The NumPyro model wraps a `jaxdl.inference.bnn.BNN`: every parameter leaf is a
latent site with an improper flat base measure, and the prior and likelihood enter through
`numpyro.factor` with the same log densities SG-MCMC uses (written once, in `bnn.py`).

Diagnostics: split R-hat (Gelman et al., BDA3 eq. 11.4, `numpyro.diagnostics`) and the
effective sample size, reported for the parameters and for function values at given
inputs. For neural networks the parameter R-hat is not meaningful (sign flips and hidden
unit permutations leave the function unchanged and the chains sit in different symmetric
modes), so the function-space R-hat is the convergence check, as in optbnn
(`compute_rhat_regression` on predictions).

  result = hmc.run_nuts(rng_key, bnn, data, num_warmup=500, num_samples=500, num_chains=4,
                        diagnostic_inputs=x_test)
  result.r_hat_functions.max() < 1.05
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import diagnostics
from numpyro.infer import HMC, MCMC, NUTS, init_to_value

from jaxdl import errors

PyTree = Any


def _site_names(template):
  paths = jax.tree_util.tree_flatten_with_path(template)[0]
  return [jax.tree_util.keystr(p).replace("'", "").replace("[", "/").replace("]", "")
          .strip("/") for p, _ in paths]


def numpyro_model(bnn, template):
  """A NumPyro model `model(inputs, targets=None)` for the BNN.

  Args:
    bnn: a `jaxdl.inference.bnn.BNN`.
    template: a position pytree (its structure and shapes name the latent sites).
  Sites: one per parameter leaf (named by its path), "log_prior" and "log_likelihood"
  factors, and a deterministic "f" with the network outputs.
  """
  leaves, treedef = jax.tree.flatten(template)
  names = _site_names(template)
  shapes = [np.shape(l) for l in leaves]

  def model(inputs, targets=None):
    values = [numpyro.sample(n, dist.ImproperUniform(dist.constraints.real, (), s))
              for n, s in zip(names, shapes)]
    position = jax.tree.unflatten(treedef, values)
    numpyro.factor("log_prior", bnn.log_prior(position))
    numpyro.deterministic("f", bnn.predict(position, inputs))
    if targets is not None:
      numpyro.factor("log_likelihood",
                     jnp.sum(bnn.log_likelihood(position, {"inputs": inputs,
                                                           "targets": targets})))
  return model, names, treedef


class NUTSResult(NamedTuple):
  positions: PyTree              # leaves [num_chains, num_samples, ...]
  functions: np.ndarray | None   # [num_chains, num_samples, m, K] at diagnostic_inputs
  r_hat_functions: np.ndarray | None   # split R-hat per function value [m * K]
  ess_functions: np.ndarray | None
  r_hat_params: np.ndarray       # split R-hat per parameter (see the module docstring)
  ess_params: np.ndarray
  num_divergences: int


def run_nuts(rng_key, bnn, data: dict, *, num_warmup: int = 500, num_samples: int = 500,
             num_chains: int = 4, init_positions: PyTree | None = None,
             diagnostic_inputs=None, algorithm: str = "nuts", step_size: float = 0.01,
             num_steps: int | None = None, target_accept_prob: float = 0.8,
             max_tree_depth: int = 10, chain_method: str = "vectorized",
             progress_bar: bool = False) -> NUTSResult:
  """Full-batch NUTS (or HMC) on `data = {"inputs", "targets"}` with several chains.

  Args:
    init_positions: a position pytree with a leading [num_chains] axis (default: the BNN's
      `init_position` for each chain).
    diagnostic_inputs: inputs [m, ...] where function values are recorded for the
      function-space R-hat and ESS.
    algorithm: "nuts" or "hmc" (fixed `num_steps` leapfrog steps of `step_size`, adapted
      during warm-up).
    chain_method: NumPyro's "vectorized" (one device, chains vmapped), "parallel" (one chain
      per device) or "sequential".
  """
  if algorithm not in ("nuts", "hmc"):
    raise errors.ConfigError(f"algorithm={algorithm!r} is not known; use 'nuts' or 'hmc'.")
  k_init, k_run = jax.random.split(rng_key)
  if init_positions is None:
    init_positions = jax.vmap(bnn.init_position)(jax.random.split(k_init, num_chains))
  template = jax.tree.map(lambda x: x[0], init_positions)
  model, names, treedef = numpyro_model(bnn, template)
  init_values = dict(zip(names, jax.tree.leaves(init_positions)))
  # The per-chain initial values go to `mcmc.run(init_params=...)`; the strategy only sets
  # the sites' shapes.
  strategy = init_to_value(values={n: v[0] for n, v in init_values.items()})
  if algorithm == "nuts":
    kernel = NUTS(model, step_size=step_size, target_accept_prob=target_accept_prob,
                  max_tree_depth=max_tree_depth, init_strategy=strategy)
  else:
    kernel = HMC(model, step_size=step_size, num_steps=num_steps or 16,
                 target_accept_prob=target_accept_prob, init_strategy=strategy)
  mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
              chain_method=chain_method, progress_bar=progress_bar)
  # Per-chain initial values: NumPyro takes them as unconstrained params with a chain axis.
  mcmc.run(k_run, data["inputs"], data["targets"], init_params=init_values,
           extra_fields=("diverging",))
  samples = mcmc.get_samples(group_by_chain=True)
  positions = jax.tree.unflatten(treedef, [samples[n] for n in names])
  flat = np.concatenate([np.asarray(samples[n]).reshape(num_chains, num_samples, -1)
                         for n in names], axis=-1)
  r_hat_p = np.asarray(diagnostics.split_gelman_rubin(flat))
  ess_p = np.asarray(diagnostics.effective_sample_size(flat))
  functions = r_hat_f = ess_f = None
  if diagnostic_inputs is not None:
    predict = jax.jit(jax.vmap(jax.vmap(lambda p: bnn.predict(p, diagnostic_inputs))))
    functions = np.asarray(predict(positions))
    fl = functions.reshape(num_chains, num_samples, -1)
    r_hat_f = np.asarray(diagnostics.split_gelman_rubin(fl))
    ess_f = np.asarray(diagnostics.effective_sample_size(fl))
  divergences = int(np.sum(np.asarray(mcmc.get_extra_fields()["diverging"])))
  return NUTSResult(positions, functions, r_hat_f, ess_f, r_hat_p, ess_p, divergences)
