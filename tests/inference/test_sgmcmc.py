"""SG-MCMC samplers on a conjugate Gaussian model recover the exact posterior.

Model: theta ~ N(0, I_2), y_i | theta ~ N(theta, I_2), i = 1..N. The posterior is
N(sum(y) / (N + 1), I / (N + 1)). Each sampler runs many independent chains (vmap) with
minibatch gradients; the Monte-Carlo error of the pooled mean and variance is estimated
from the spread of the per-chain estimates (chains are independent), and the estimates
must lie within 5 standard errors. Step sizes are chosen so that the discretization and
minibatch biases (computed from the discrete Lyapunov equation of each linear recursion:
< 1% of the variance) are well inside that tolerance.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.inference import gradients, schedules, sgmcmc

N, B, D = 100, 80, 2
NUM_CHAINS = 64


@pytest.fixture(scope="module")
def problem():
  y = np.asarray(jax.random.normal(jax.random.key(42), (N, D)) + jnp.array([0.5, -1.0]))
  post_mean = y.sum(0) / (N + 1)
  post_var = 1.0 / (N + 1)
  log_prior = lambda th: -0.5 * jnp.sum(th ** 2)
  log_lik = lambda th, batch: -0.5 * jnp.sum((batch["y"] - th) ** 2, -1)
  grad_fn = gradients.grad_estimator(log_prior, log_lik, N)
  y_dev = jnp.asarray(y)

  def batch_fn(key, step):
    del step
    return {"y": y_dev[jax.random.choice(key, N, (B,), replace=False)]}
  return dict(y=y, mean=post_mean, var=post_var, grad_fn=grad_fn, batch_fn=batch_fn,
              log_prior=log_prior, log_lik=log_lik)


_COMPILED = {}


def _run(make_algorithm, batch_fn, *, burnin, num_samples, thinning, seed=0, temperature=1.0):
  """Runs NUM_CHAINS chains; `make_algorithm(temperature)` builds the sampler. The compiled
  program is cached per sampler, with the temperature as a traced argument."""
  key = (make_algorithm, burnin, num_samples, thinning)
  if key not in _COMPILED:
    def chain(k, init, temp):
      algorithm = make_algorithm(temp)
      _, samples = sgmcmc.sample(k, algorithm.step, algorithm.init(init), batch_fn,
                                 num_burnin_steps=burnin, num_samples=num_samples,
                                 thinning=thinning)
      return samples
    _COMPILED[key] = jax.jit(jax.vmap(chain, in_axes=(0, 0, None)))
  keys = jax.random.split(jax.random.key(seed), NUM_CHAINS)
  inits = jax.random.normal(jax.random.key(seed + 1), (NUM_CHAINS, D)) * 0.3
  return np.asarray(_COMPILED[key](keys, inits, temperature))  # [chains, samples, D]


def _check_moments(samples, mean, var):
  chain_means = samples.mean(1)                      # [C, D]
  chain_vars = samples.var(1, ddof=1)                # [C, D]
  se_mean = chain_means.std(0, ddof=1) / np.sqrt(samples.shape[0])
  se_var = chain_vars.std(0, ddof=1) / np.sqrt(samples.shape[0])
  # Pooled variance around the true mean would mix in the error of the mean; use the
  # average within-chain variance (chains are long compared to their mixing time).
  np.testing.assert_array_less(np.abs(chain_means.mean(0) - mean), 5 * se_mean)
  np.testing.assert_array_less(np.abs(chain_vars.mean(0) - var), 5 * se_var)
  # The test has power: the Monte-Carlo error is small compared to the posterior scale.
  assert np.all(se_var < 0.05 * var) and np.all(se_mean < 0.05 * np.sqrt(var))


def test_sgld_recovers_conjugate_posterior(problem):
  make = problem.setdefault("sgld", lambda t: sgmcmc.sgld(problem["grad_fn"], 2e-4, t))
  s = _run(make, problem["batch_fn"], burnin=1000, num_samples=150, thinning=20)
  _check_moments(s, problem["mean"], problem["var"])


def _make_sghmc(problem):
  return problem.setdefault(
      "sghmc", lambda t: sgmcmc.sghmc(problem["grad_fn"], 1e-4, friction=0.3, temperature=t))


def test_sghmc_recovers_conjugate_posterior(problem):
  s = _run(_make_sghmc(problem), problem["batch_fn"], burnin=1000, num_samples=150,
           thinning=20, seed=2)
  _check_moments(s, problem["mean"], problem["var"])


def test_adaptive_sghmc_recovers_conjugate_posterior(problem):
  make = problem.setdefault("asghmc", lambda t: sgmcmc.adaptive_sghmc(
      problem["grad_fn"], step_size=0.03, mdecay=0.3, num_burnin_steps=500, temperature=t))
  s = _run(make, problem["batch_fn"], burnin=1000, num_samples=150, thinning=20, seed=4)
  _check_moments(s, problem["mean"], problem["var"])


def test_temperature_scales_the_posterior_variance(problem):
  # p^(1/T): the variance is T times the posterior variance (same compiled program).
  s = _run(_make_sghmc(problem), problem["batch_fn"], burnin=1000, num_samples=150,
           thinning=20, seed=6, temperature=0.25)
  _check_moments(s, problem["mean"], 0.25 * problem["var"])


def test_cyclical_schedule_matches_zhang_et_al():
  sched = schedules.cyclical_cosine(0.1, num_steps=100, num_cycles=4)
  steps = np.arange(100)
  expected = 0.05 * (np.cos(np.pi * (steps % 25) / 25) + 1)
  np.testing.assert_allclose(jax.vmap(sched)(steps), expected, rtol=1e-5)
  temp = schedules.cyclical_temperature(1.0, 100, 4, exploration=0.8)
  t = np.asarray(jax.vmap(temp)(steps))
  assert t[:20].sum() == 0 and np.all(t[20:25] == 1.0) and t[25] == 0


def test_gibbs_wrapper_redraws_on_schedule():
  # aux counts how often it was redrawn; the kernel sees the current value.
  def build(aux):
    def kernel(key, state, batch):
      return sgmcmc.SGLDState(state.position + aux, state.step + 1), None
    return kernel
  alg = sgmcmc.with_gibbs(build, sgmcmc.sgld_init, lambda k, p, a: a + 1.0, every=3)
  state = alg.init(jnp.zeros(()), jnp.zeros(()))
  for _ in range(7):
    state, _ = alg.step(jax.random.key(0), state, None)
  assert float(state.aux) == 3.0       # redrawn at steps 0, 3, 6
  assert float(state.state.position) == 1 + 1 + 1 + 2 + 2 + 2 + 3


def test_data_parallel_gradient_matches_single_device(tmp_path):
  """Runs in a subprocess with 4 host devices: shard_map + psum == one device."""
  import subprocess
  import sys
  import textwrap
  code = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    from jaxdl.inference import gradients
    assert jax.device_count() == 4
    mesh = Mesh(np.array(jax.devices()), ("data",))
    w = {"a": jnp.arange(3.0), "b": jnp.ones(())}
    log_prior = lambda p: -0.5 * (jnp.sum(p["a"] ** 2) + p["b"] ** 2)
    log_lik = lambda p, b: -0.5 * (b["y"] - b["x"] @ p["a"] - p["b"]) ** 2
    x = jax.random.normal(jax.random.key(0), (16, 3))
    batch = {"x": x, "y": jnp.sin(x[:, 0])}
    ref = gradients.grad_estimator(log_prior, log_lik, 1000)(w, batch)
    dp = gradients.data_parallel_grad_estimator(log_prior, log_lik, 1000, mesh)
    sharded = gradients.shard_batch(batch, mesh)
    got = jax.jit(dp)(w, sharded)
    auto = jax.jit(gradients.grad_estimator(log_prior, log_lik, 1000))(w, sharded)
    for g in (got, auto):
      for k in ref:
        np.testing.assert_allclose(g[k], ref[k], rtol=1e-5, atol=1e-5)
    print("OK")
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "OK" in out.stdout
