"""Transparent huge pages for XLA:CPU's per-execution buffers (Linux, glibc >= 2.35).

XLA:CPU allocates the temporary buffer of every execution afresh, and glibc serves any
allocation above 32 MiB with a new `mmap`, so each training step first-touches all of it
again: one minor page fault per 4 KiB page, each one a trap into the kernel that zeroes the
page. A densenet121 training step at batch 8 takes 287,000 faults (1.1 GiB) on the 2-core
development VM, ~0.6 s of kernel time in a 1.5 s step; timm's step takes 7,000-66,000
(most of PyTorch's tensors are below glibc's mmap threshold and are recycled from its heap).
With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, glibc asks for transparent huge pages on those
mappings (`madvise(MADV_HUGEPAGE)`): 1,000 faults and 1.13 s per step (BENCHMARKS.md,
"Page faults"). glibc reads the tunable only when a process starts, so:

- `python -m jaxdl.train` and the benchmark tools re-execute themselves once with it
  (`reexec_if_needed()`, before any work; `JAXDL_HUGEPAGES=0` turns this off);
- in a notebook or your own script, start Python with it:
  `GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python train.py`.

Nothing changes where it cannot help: other operating systems, other C libraries, glibc
older than 2.35, or a kernel with transparent huge pages set to "never".
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
_THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, ...] | None:
  lib, version = platform.libc_ver()
  if lib != "glibc" or not version:
    return None
  try:
    return tuple(int(p) for p in version.split(".")[:2])
  except ValueError:
    return None


def _thp_mode(path: str = _THP_ENABLED) -> str | None:
  """The kernel's THP mode ("always", "madvise", "never"), or None where unknown."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  for word in text.split():
    if word.startswith("[") and word.endswith("]"):
      return word[1:-1]
  return None


def active(env=None) -> bool:
  """Whether this process's environment already sets glibc's hugetlb tunable."""
  env = os.environ if env is None else env
  return any(t.startswith("glibc.malloc.hugetlb=")
             for t in env.get("GLIBC_TUNABLES", "").split(":"))


def supported() -> bool:
  """Linux with glibc >= 2.35 (the tunable's first release) and THP not "never"."""
  if not sys.platform.startswith("linux"):
    return False
  version = _glibc_version()
  return version is not None and version >= (2, 35) and _thp_mode() in ("always", "madvise")


def with_tunable(env=None) -> dict:
  """A copy of `env` (default os.environ) with the tunable added to GLIBC_TUNABLES."""
  env = dict(os.environ if env is None else env)
  if not active(env):
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), TUNABLE) if t)
  return env


def wanted(env=None) -> bool:
  env = os.environ if env is None else env
  return env.get("JAXDL_HUGEPAGES", "1") != "0" and not active(env) and supported()


def reexec_if_needed() -> None:
  """Replaces this process by the same command with the tunable set, where it helps.

  Call it first thing in a command-line entry point (`if __name__ == "__main__":`), before
  any work: the process is replaced, so nothing done before survives. The new process has
  the tunable set and does not re-execute again.
  """
  if not wanted():
    return
  argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], with_tunable())
