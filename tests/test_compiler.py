"""jaxdl.compiler: the XLA:CPU options jaxdl's own steps compile with, and when they are off."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import compiler


def _dot_then_reduce(x, w):
  h = x @ w
  return h, jnp.sum(h * h, axis=0)


def test_cpu_options_keep_reductions_and_leave_dots_to_xla():
  assert compiler.compiler_options("cpu") == compiler.CPU_OPTIONS
  x, w = jnp.ones((256, 128)), jnp.ones((128, 64))
  default = compiler.ynn_fusions(jax.jit(_dot_then_reduce).lower(x, w).compile().as_text())
  ours = compiler.ynn_fusions(compiler.jit(_dot_then_reduce).lower(x, w).compile().as_text())
  # XLA's default gives YNNPACK the dot; jaxdl's options give it only the reduction.
  assert any("dot" in ops for ops in default), default
  assert ours and not any("dot" in ops for ops in ours), ours
  assert any("reduce" in ops for ops in ours), ours


def test_values_match_float64_under_the_options():
  rng = np.random.default_rng(0)
  x, w = rng.standard_normal((64, 48)), rng.standard_normal((48, 32))
  h, s = compiler.jit(_dot_then_reduce)(jnp.float32(x), jnp.float32(w))
  np.testing.assert_allclose(h, x @ w, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(s, ((x @ w) ** 2).sum(0), rtol=1e-5)


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_no_options_off_cpu(backend):
  assert compiler.compiler_options(backend) is None


def test_environment_switch(monkeypatch):
  monkeypatch.setenv(compiler.ENV_SWITCH, "0")
  assert compiler.compiler_options("cpu") is None
  monkeypatch.setenv(compiler.ENV_SWITCH, "maybe")
  with pytest.raises(ValueError, match=f"{compiler.ENV_SWITCH}='maybe' is not understood"):
    compiler.compiler_options("cpu")


def test_xla_flags_setting_the_option_win(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
  assert compiler.compiler_options("cpu") is None


def test_an_option_this_xla_rejects_falls_back_with_one_warning(monkeypatch, caplog):
  monkeypatch.setattr(compiler, "CPU_OPTIONS",
                      {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_NO_SUCH"})
  with caplog.at_level(logging.WARNING, logger="jaxdl"):
    assert compiler.compiler_options("cpu") is None
    assert compiler.compiler_options("cpu") is None
  assert len([r for r in caplog.records if "does not accept" in r.message]) == 1


def test_jit_merges_given_options_over_jaxdl_ones():
  opts = {"xla_cpu_experimental_ynn_fusion_type": ""}
  text = compiler.jit(_dot_then_reduce, compiler_options=opts).lower(
      jnp.ones((256, 128)), jnp.ones((128, 64))).compile().as_text()
  assert compiler.ynn_fusions(text) == []
