"""Shared test set-up: the offline data folder and the repository root."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SHARED_DATA = REPO.parent / "shared" / "data"

if "JAXDL_DATA_DIR" not in os.environ and _SHARED_DATA.is_dir():
  os.environ["JAXDL_DATA_DIR"] = str(_SHARED_DATA)
# Subprocesses (CLI tests) import jaxdl from this checkout even when it is not installed.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


def shared_data_dir() -> Path | None:
  d = os.environ.get("JAXDL_DATA_DIR")
  return Path(d) if d and Path(d).is_dir() else None


@pytest.fixture(scope="session")
def data_dir():
  """The offline data folder (../shared/data); skips the test when it is not there."""
  d = shared_data_dir()
  if d is None:
    pytest.skip("offline data not found: set JAXDL_DATA_DIR to the folder of shared/data")
  return d


@pytest.fixture(scope="session")
def repo_root() -> Path:
  return REPO


@pytest.fixture(scope="session")
def tool():
  """tool(name) -> the module tools/<name>.py, loaded from its file (tools/ is no package)."""
  import importlib.util

  def load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  return load


def run_cli(args, *, env=None, timeout=300, cwd=None):
  """Runs `python -m jaxdl.train ARGS` in a subprocess; returns CompletedProcess."""
  import subprocess
  import sys
  full_env = dict(os.environ)
  full_env.update(env or {})
  return subprocess.run([sys.executable, "-m", "jaxdl.train", *args], capture_output=True,
                        text=True, timeout=timeout, env=full_env, cwd=cwd or REPO)


@pytest.fixture(scope="session")
def cli():
  return run_cli
