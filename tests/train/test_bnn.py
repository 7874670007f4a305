"""The bnn_regression trainer through the CLI (the issue's interface), in a smoke setting."""

import json
import math
import os
import subprocess
import sys

import pytest


def _run(args, workdir, data_dir):
  cmd = [sys.executable, "-m", "jaxdl.train", "--config", "configs/uci_gp_prior.py:runlocal",
         "--workdir", str(workdir)] + args
  # The smoke run is dominated by XLA compilation: skipping LLVM's optimization passes
  # halves it and does not change what is computed.
  env = {"JAXDL_DATA_DIR": str(data_dir), "XLA_FLAGS": (
      os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()}
  return subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                        env={**os.environ, **env})


def _check_run(out, workdir):
  assert out.returncode == 0, out.stderr[-3000:]
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  first, last = json.loads(lines[0]), json.loads(lines[-1])
  assert "fit/wasserstein" in first                 # the fitting curve is logged
  assert math.isfinite(last["test_rmse"]) and math.isfinite(last["test_nll"])
  # Boston's target std is 9.2: even this tiny run must do much better than the mean.
  assert 1.0 < last["test_rmse"] < 7.0
  assert (workdir / "prior_hyper.msgpack").exists()


def test_uci_cli_writes_test_rmse_and_nll(tmp_path, data_dir, repo_root):
  out = _run(["--config.dataset=bostonHousing", "--config.split=3",
              "--config.prior=gp_gaussian"], tmp_path / "w", data_dir)
  _check_run(out, tmp_path / "w")


@pytest.mark.slow
def test_uci_cli_hierarchical_prior(tmp_path, data_dir, repo_root):
  """The hierarchical prior (Gibbs steps for the layer precisions) through the CLI."""
  out = _run(["--config.dataset=bostonHousing", "--config.split=3",
              "--config.prior=gp_hierarchical"], tmp_path / "w", data_dir)
  _check_run(out, tmp_path / "w")


def test_uci_cli_rejects_an_unknown_prior(tmp_path, data_dir):
  out = _run(["--config.prior=gp_gausian"], tmp_path / "w", data_dir)
  assert out.returncode == 2
  err = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "gp_gaussian" in err[0], out.stderr[-2000:]
