"""Command line: python -m jaxdl.train --config configs/X.py --workdir DIR [--config.k=v ...].

Runs the trainer named by `config.trainer`. Mistakes in the command (unknown model or
dataset, missing data, bad config values, wrong input shapes) print one line starting with
"error:" and exit with status 2; a diverged run (NaN/Inf) exits with status 3 and keeps its
last good checkpoint. Restarting with the same --workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import logging
import sys

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/<name>.py[:arg]).", lock_config=False,
    accept_new_attributes=True)
# Overrides may add keys only where a config holds free-form options; anywhere else a new key
# is a typo and is rejected.
OPEN_SECTIONS = ("model.", "dataset.kwargs.", "probe_kwargs.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --multihost; "
                    "default: detected from the cluster environment).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --multihost).")
flags.DEFINE_integer("process_id", None, "This process's index (with --multihost).")


def _error(msg: str, code: int = 2) -> int:
  print(f"error: {msg}", file=sys.stderr)
  return code


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  for line in text.splitlines():
    line = line.strip()
    if line and not line.startswith(("Traceback", "File ")):
      return line
  return type(e).__name__


def _load_config():
  """The parsed config, or an error message naming the problem and the fix."""
  holder = FLAGS["config"]
  filename = config_flags.get_config_filename(holder)
  try:
    config = FLAGS.config
    config.get("trainer")  # Loading is deferred until first use.
  except OSError:
    return None, (f"config file {filename!r} not found; pass the path of a file in configs/, "
                  "e.g. --config configs/quickstart.py.")
  except Exception as e:  # An error inside the config's get_config().
    return None, f"config file {filename!r} failed to load: {type(e).__name__}: {_first_line(e)}"
  return config, _check_new_keys(filename)


def _check_new_keys(filename):
  import runpy
  path, _, arg = filename.partition(":")
  try:
    base = runpy.run_path(path)["get_config"](arg or None)
  except Exception:  # Already loaded once above; a config with side effects is its own problem.
    return None
  known = set(_dotted_keys(base))
  for key in config_flags.get_override_values(FLAGS["config"]):
    if key.startswith(OPEN_SECTIONS) or key in known:
      continue
    import difflib
    parent, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
    close = difflib.get_close_matches(leaf, sorted(siblings), n=1, cutoff=0.25)
    hint = f" (did you mean {siblings[close[0]]!r}?)" if close else ""
    return (f"config has no key {key!r}{hint}; new keys may only be added under "
            f"{', '.join(s.rstrip('.') for s in OPEN_SECTIONS)}.")
  return None


def _dotted_keys(node, prefix=""):
  for k, v in node.items():
    yield prefix + k
    if hasattr(v, "items"):
      yield from _dotted_keys(v, prefix + k + ".")


def main(argv=None) -> int:
  argv = list(sys.argv if argv is None else argv)
  try:
    FLAGS(argv)
  except flags.Error as e:
    return _error(f"{_first_line(e)} (see --helpshort for the flags).")
  except Exception as e:  # Overrides that do not parse.
    return _error(f"bad --config override: {type(e).__name__}: {_first_line(e)}")
  if not FLAGS["config"].present:
    return _error("--config is required, e.g. --config configs/quickstart.py.")
  if not FLAGS.workdir:
    return _error("--workdir is required: the directory for checkpoints and metrics.")
  config, problem = _load_config()
  if problem:
    return _error(problem)

  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("jaxdl").setLevel(logging.INFO)
  import jax
  from jaxdl import errors
  from jaxdl.train import run

  try:
    if FLAGS.multihost:
      jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                 FLAGS.process_id)
    final = run(config, FLAGS.workdir)
  except errors.UserError as e:
    return _error(_first_line(e))
  except errors.NonFiniteLossError as e:
    return _error(_first_line(e), code=3)
  except errors.TrainingInterrupted as e:
    return _error(_first_line(e), code=130)
  except KeyboardInterrupt:
    return _error("interrupted before a checkpoint could be written at a step boundary; "
                  "restarting with the same --workdir resumes from the newest checkpoint.",
                  code=130)
  if jax.process_index() == 0:
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in sorted(final.items()))
    print(f"done: {shown}")
  return 0


if __name__ == "__main__":
  from jaxdl import hugepages
  hugepages.reexec_if_needed()  # CPU: huge pages for XLA's per-step buffers
  sys.exit(main())
