"""config.compilation_cache: jax's persistent compilation cache around a training run."""

import sys
from pathlib import Path

import jax
import pytest

from jaxdl import compiler, errors
from jaxdl.train import run
from jaxdl.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from configs import quickstart  # noqa: E402


def test_cache_dir_settings(monkeypatch, tmp_path):
  monkeypatch.setenv("JAXDL_CACHE_DIR", str(tmp_path / "env"))
  assert compiler.cache_dir("auto") == str(tmp_path / "env" / "xla")
  monkeypatch.delenv("JAXDL_CACHE_DIR")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert compiler.cache_dir("auto") == str(tmp_path / "home" / ".cache" / "jaxdl" / "xla")
  for off in ("", "none", "Off"):
    assert compiler.cache_dir(off) is None
  assert compiler.cache_dir(str(tmp_path / "mine")) == str(tmp_path / "mine")
  with pytest.raises(errors.ConfigError, match="config.compilation_cache=3 must be a string"):
    compiler.cache_dir(3)


@pytest.fixture
def cache_everything():
  """JAX caches compilations of >= 1 s only; the quickstart's take less."""
  previous = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield
  jax.config.update("jax_persistent_cache_min_compile_time_secs", previous)


def _small_config(cache):
  config = quickstart.get_config("runlocal")
  config.compilation_cache = cache
  return config


def test_a_second_run_loads_its_steps_from_the_cache(tmp_path, cache_everything):
  """The first run writes the compiled train / eval steps to the cache, a second run of the
  same config (fresh workdir, in-memory caches cleared) loads them: cache hits, and the same
  metrics. Outside the run jax's own setting (no cache) is back."""
  events = []

  def listener(name, **kwargs):
    events.append(name)
  cache = tmp_path / "xla"
  first = run(_small_config(str(cache)), tmp_path / "a")
  assert jax.config.jax_compilation_cache_dir is None
  written = list(cache.iterdir())
  assert written, "nothing was written to the cache"
  jax.clear_caches()
  jax.monitoring.register_event_listener(listener)
  try:
    second = run(_small_config(str(cache)), tmp_path / "b")
  finally:
    jax.monitoring.unregister_event_listener(listener)
  assert events.count("/jax/compilation_cache/cache_hits") >= 2  # train and eval steps
  assert first["eval/loss"] == second["eval/loss"] and first["step"] == second["step"]
  assert [m.get("train/loss") for m in read_metrics(tmp_path / "a")] == [
      m.get("train/loss") for m in read_metrics(tmp_path / "b")]


def test_off_writes_nothing(tmp_path, cache_everything, monkeypatch):
  monkeypatch.setenv("JAXDL_CACHE_DIR", str(tmp_path / "auto"))
  run(_small_config(""), tmp_path / "w")
  assert not (tmp_path / "auto" / "xla").exists()


def test_a_cache_dir_set_for_jax_wins(tmp_path, cache_everything):
  mine = tmp_path / "users"
  jax.config.update("jax_compilation_cache_dir", str(mine))
  try:
    with compiler.compilation_cache(str(tmp_path / "config")) as used:
      assert used == str(mine)
  finally:
    jax.config.update("jax_compilation_cache_dir", None)
  assert not (tmp_path / "config").exists()


def test_bench_compile_cache_smoke(tool):
  """tools/bench_compile_cache.py runs its three settings (numbers meaningless here)."""
  med = tool("bench_compile_cache").main(["--smoke", "--batch", "2", "--repeats", "1"])
  assert set(med) == {"off", "write", "read"} and all(t > 0 for t in med.values())
