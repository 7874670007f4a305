"""XLA compiler options that jaxdl compiles its own steps with, per compilation.

On CPU, XLA (jax 0.10) hands dots, convolutions and reductions to YNNPACK "fusions" by
default. For jaxdl's models its stand-alone dots and convolutions are slower than XLA's own
(Eigen) ones, while its reduction fusions (which also take in the ops that feed the reduction)
are what make training fast: BatchNorm / LayerNorm statistics, the depthwise kernel gradient.
`compiler_options()` keeps the reduction fusions only (LIBRARY_FUSION_TYPE_REDUCE): inference
1.07-1.20x faster on four of five models (rdnet_tiny 0.97x), training 1.15x on densenet121
and within noise on the others. BENCHMARKS.md ("XLA:CPU fusion types") has the measurements
(`tools/bench_models.py --variants ynn-default`).

The options are passed to one compilation (`jax.jit(f, compiler_options=...)`), never set as
process-wide flags, so code that imports jaxdl is unaffected. They are left out when:
  * the backend is not CPU (the options are XLA:CPU's);
  * XLA_FLAGS already sets the same option (the user's choice wins);
  * JAXDL_CPU_COMPILER_OPTIONS=0 is set (XLA's defaults for everything);
  * this XLA does not know the option or its value (checked once by compiling a tiny function;
    a newer XLA that renamed it falls back to its defaults with one warning).

    step = jax.jit(train_step, compiler_options=jaxdl.compiler.compiler_options())
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re

import jax

log = logging.getLogger("jaxdl")

# XLA:CPU option -> value. REDUCE alone: dots and convolutions compiled by XLA itself.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}

ENV_SWITCH = "JAXDL_CPU_COMPILER_OPTIONS"


def compiler_options(backend: str | None = None) -> dict[str, str] | None:
  """The options for a compilation on `backend` (default: JAX's default backend), or None."""
  backend = backend or jax.default_backend()
  if backend != "cpu":
    return None
  _hint_hugepages()
  switch = os.environ.get(ENV_SWITCH, "1").strip().lower()
  if switch in ("0", "false", "off", "no"):
    return None
  if switch not in ("1", "true", "on", "yes"):
    raise ValueError(f"{ENV_SWITCH}={os.environ[ENV_SWITCH]!r} is not understood; set it to 1 "
                     "(jaxdl's CPU compiler options, the default) or 0 (XLA's defaults).")
  flags = os.environ.get("XLA_FLAGS", "")
  options = {k: v for k, v in CPU_OPTIONS.items() if f"--{k}" not in flags}
  return dict(options) if options and _accepted(tuple(sorted(options.items()))) else None


@functools.cache
def _hint_hugepages() -> bool:
  """Once per process: say so where a CPU run lacks glibc's huge-page tunable."""
  from jaxdl import hugepages
  if not hugepages.wanted():
    return False
  log.warning("XLA:CPU steps run up to 1.8x faster with transparent huge pages: start Python "
              "with GLIBC_TUNABLES=%s (python -m jaxdl.train does this itself; "
              "JAXDL_HUGEPAGES=0 silences this note). See jaxdl/hugepages.py.", hugepages.TUNABLE)
  return True


@functools.cache
def _accepted(options: tuple[tuple[str, str], ...]) -> bool:
  """Whether this XLA:CPU compiles a tiny function with `options` (once per process)."""
  try:
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    jax.jit(lambda x: (x @ x).sum(0)).lower(
        jax.ShapeDtypeStruct((8, 8), "float32", sharding=cpu)).compile(dict(options))
  except Exception as e:  # an XLA without the option raises INVALID_ARGUMENT at compile time
    log.warning("XLA:CPU does not accept jaxdl's compiler options %s (%s); compiling with "
                "XLA's defaults.", dict(options), str(e).splitlines()[0][:200])
    return False
  return True


def jit(fun, **kwargs):
  """`jax.jit(fun, **kwargs)` with `compiler_options()` merged under any given ones."""
  options = {**(compiler_options() or {}), **(kwargs.pop("compiler_options", None) or {})}
  return jax.jit(fun, compiler_options=options or None, **kwargs)


def ynn_fusions(compiled_text: str) -> list[list[str]]:
  """The computations an XLA:CPU executable hands to YNNPACK, each as its HLO opcodes.

  compiled_text: `jax.jit(f).lower(...).compile().as_text()`.
  """
  bodies = dict(re.findall(r"^%(\S+) \([^\n]*\{\n(.*?)\n\}", compiled_text, re.S | re.M))
  called = re.findall(r"fusion\([^\n]*calls=%([\w.]+)[^\n]*__ynn_fusion", compiled_text)
  # An instruction: `name = shape opcode(` (tuple shapes and hyphenated opcodes included).
  opcode = re.compile(r"= (?:\(.*?\)|\S+) ([\w\-]+)\(")
  return [opcode.findall(bodies[c]) for c in called]


# ---------------------------------------------------------------- persistent compilation cache

def cache_dir(setting: str) -> str | None:
  """The directory `config.compilation_cache` names, or None (no persistent cache).

  "auto": xla/ in jaxdl's cache folder ($JAXDL_CACHE_DIR, else ~/.cache/jaxdl, where the
  decoded datasets are kept too); "" (or "none", "off"): no cache; else that directory.
  """
  if not isinstance(setting, str):
    from jaxdl import errors
    raise errors.ConfigError(f"config.compilation_cache={setting!r} must be a string: 'auto', "
                             "'' (off) or a directory.")
  setting = setting.strip()
  if setting.lower() in ("", "none", "off"):
    return None
  if setting.lower() == "auto":
    from jaxdl.data.registry import cache_dir as jaxdl_cache_dir
    return str(jaxdl_cache_dir() / "xla")
  return os.path.expanduser(setting)


@contextlib.contextmanager
def compilation_cache(setting: str = "auto"):
  """Within the block, jax's persistent compilation cache lives in `cache_dir(setting)`.

  A run that compiles again what an earlier run compiled (the same program, shapes, jax and
  XLA versions, options) loads the executable instead: on a GPU that skips XLA's autotuning
  and fusion passes (minutes for RDNet and the DenseNets at autotune level 2), on CPU
  rdnet_tiny's train step loads in ~5 s instead of ~22 s; a resumed run starts at once.
  JAX caches a compilation that took at least `jax_persistent_cache_min_compile_time_secs`
  (1 s). A cache directory the user set for jax (JAX_COMPILATION_CACHE_DIR) wins; on exit
  jax's previous setting is restored. Yields the directory in use, or None.
  """
  from jax.experimental.compilation_cache import compilation_cache as cc
  previous = jax.config.jax_compilation_cache_dir
  path = None if previous else cache_dir(setting)
  if path is None:
    yield previous
    return
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    log.warning("no XLA compilation cache: cannot create %s (%s); set config."
                "compilation_cache='' or another directory.", path, e)
    yield None
    return
  log.info("XLA compilation cache: %s (config.compilation_cache; '' turns it off)", path)
  cc.reset_cache()  # an earlier compilation in this process may have checked for no cache
  cc.set_cache_dir(path)
  try:
    yield path
  finally:
    cc.set_cache_dir(previous)
    cc.reset_cache()
