"""jaxdl.hugepages: the glibc tunable for transparent huge pages, and the re-execution."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxdl import hugepages

ROOT = Path(__file__).resolve().parents[1]
needs_support = pytest.mark.skipif(not hugepages.supported(),
                                   reason="needs Linux, glibc >= 2.35 and THP not 'never'")


def test_with_tunable_appends_once():
  env = hugepages.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert env["X"] == "1"
  assert hugepages.with_tunable(env) == env  # Already there: unchanged.
  assert hugepages.with_tunable({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_active_and_wanted_follow_the_environment():
  assert not hugepages.active({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
  assert hugepages.active({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0"})
  # A user's own setting (even =0) and JAXDL_HUGEPAGES=0 are respected.
  assert not hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
  assert not hugepages.wanted({"JAXDL_HUGEPAGES": "0"})
  assert hugepages.wanted({}) == hugepages.supported()


@pytest.mark.parametrize("text,mode", [("always [madvise] never\n", "madvise"),
                                       ("[always] madvise never\n", "always"),
                                       ("always madvise [never]\n", "never"), ("", None)])
def test_thp_mode_parses_the_kernel_setting(tmp_path, text, mode):
  path = tmp_path / "enabled"
  path.write_text(text)
  assert hugepages._thp_mode(str(path)) == mode
  assert hugepages._thp_mode(str(tmp_path / "missing")) is None


_PRINT_ENV = ("from jaxdl import hugepages; hugepages.reexec_if_needed(); import os, sys; "
              "print(os.environ.get('GLIBC_TUNABLES')); print(sys.argv[1:])")


def _child(env_extra):
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXDL_HUGEPAGES")}
  env.update(env_extra, PYTHONPATH=str(ROOT))
  out = subprocess.run([sys.executable, "-c", _PRINT_ENV, "a", "--b=1"], env=env,
                       capture_output=True, text=True, check=True, timeout=60)
  return out.stdout.splitlines()


@needs_support
def test_reexec_sets_the_tunable_and_keeps_the_arguments():
  assert _child({}) == ["glibc.malloc.hugetlb=1", "['a', '--b=1']"]
  assert _child({"JAXDL_HUGEPAGES": "0"}) == ["None", "['a', '--b=1']"]
  assert _child({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == [
      "glibc.malloc.hugetlb=0", "['a', '--b=1']"]


_FAULTS = """
import resource, jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sin(x) * 2.0)
x = jnp.ones((16, 1024, 1024), jnp.float32)  # 64 MiB: above glibc's 32 MiB mmap threshold
f(x).block_until_ready(); f(x).block_until_ready()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  f(x).block_until_ready()  # A fresh 64 MiB result buffer per call, freed after it.
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 5)
"""


@needs_support
def test_huge_pages_cut_the_page_faults_of_an_xla_cpu_call():
  # 64 MiB = 16,384 pages of 4 KiB first-touched per call; with transparent huge pages,
  # 2 MiB at a time.
  def faults(extra):
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update(extra, JAX_PLATFORMS="cpu", JAXDL_HUGEPAGES="0")
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    return float(out.stdout.split()[-1])
  plain = faults({})
  huge = faults({"GLIBC_TUNABLES": hugepages.TUNABLE})
  assert plain > 8_000, plain  # The problem exists here: the pages fault on every call.
  assert huge < plain / 4, (plain, huge)


def test_compiler_options_hint_once_where_the_tunable_is_missing(monkeypatch, caplog):
  from jaxdl import compiler
  compiler._hint_hugepages.cache_clear()
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.delenv("JAXDL_HUGEPAGES", raising=False)
  monkeypatch.setattr(hugepages, "supported", lambda: True)
  with caplog.at_level("WARNING", logger="jaxdl"):
    compiler.compiler_options("cpu")
    compiler.compiler_options("cpu")
  notes = [r for r in caplog.records if "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in r.message]
  assert len(notes) == 1
  compiler._hint_hugepages.cache_clear()
  monkeypatch.setenv("JAXDL_HUGEPAGES", "0")
  caplog.clear()
  compiler.compiler_options("cpu")
  assert not [r for r in caplog.records if "GLIBC_TUNABLES" in r.message]
  compiler._hint_hugepages.cache_clear()
