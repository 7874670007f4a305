"""Orbax checkpoints that survive crashes and corrupted files.

Orbax's CheckpointManager writes each step to a temporary directory and renames it when
complete, so a killed process never leaves a half-written checkpoint that looks valid. On
restore we walk from the newest step back: a checkpoint that cannot be read is moved to
WORKDIR/corrupted_checkpoints/ with a warning and the previous one is used. A checkpoint whose
arrays have other shapes than the current run's (another model or config) is NOT corruption:
that raises a one-line UserError instead of touching the files.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxdl import errors

log = logging.getLogger("jaxdl")


def _key_name(k):
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _flat_shapes(tree) -> dict[str, tuple]:
  """{"params/dense_0/kernel": shape} for every array leaf, whatever the container types."""
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))[0]
  return {"/".join(_key_name(k) for k in path): tuple(leaf.shape)
          for path, leaf in leaves if hasattr(leaf, "shape")}


class Checkpointer:
  def __init__(self, directory, *, keep: int = 3, async_save: bool = True):
    self.directory = Path(directory).absolute()
    self.keep = keep
    self.async_save = async_save
    self._manager = self._make_manager()

  def _make_manager(self):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=self.keep, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=self.async_save)
    return ocp.CheckpointManager(self.directory, item_handlers=ocp.StandardCheckpointHandler(),
                                 options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state, *, force: bool = False):
    self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()

  def _check_shapes(self, step, abstract_state):
    try:
      meta = self._manager.item_metadata(step)
      saved = _flat_shapes(getattr(meta, "tree", meta))
    except Exception:  # Unreadable metadata: restore() treats it as corruption.
      return
    want = _flat_shapes(abstract_state)
    if not saved:
      return
    for path in sorted(set(saved) | set(want)):
      if saved.get(path) != want.get(path):
        raise errors.ConfigError(
            f"checkpoint step {step} in {self.directory} does not fit this run (array {path}: "
            f"saved {saved.get(path, 'absent')}, expected {want.get(path, 'absent')}): it "
            "belongs to another model or config; use a new --workdir or the config that "
            "wrote it.")

  def restore_latest(self, abstract_state):
    """The newest readable checkpoint as (step, state), or (None, None) if there is none.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings.
    """
    for step in reversed(self.steps()):
      self._check_shapes(step, abstract_state)
      try:
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        return step, state
      except errors.UserError:
        raise
      except Exception as e:  # Orbax raises many types for unreadable files.
        self._quarantine(step, e)
    return None, None

  def _quarantine(self, step, exc):
    dest = self.directory.parent / "corrupted_checkpoints" / f"{step}_{int(time.time())}"
    log.warning("checkpoint step %d in %s is unreadable (%s: %s); moved it to %s and trying "
                "the previous one.", step, self.directory, type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "", dest)
    if jax.process_index() == 0:
      dest.parent.mkdir(parents=True, exist_ok=True)
      src = self.directory / str(step)
      if src.exists():
        shutil.move(str(src), str(dest))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"jaxdl_quarantine_{step}")
    self._manager.close()
    self._manager = self._make_manager()


def load_variables(workdir, step: int | None = None) -> dict:
  """The model variables {"params": ..., "batch_stats": ...} of a training run's checkpoint.

  Args:
    workdir: the run's --workdir (or its checkpoints/ folder).
    step: which checkpoint; None for the latest.

  Returns:
    A dict usable as `model.apply(variables, x, train=False)`, arrays on the host.
  """
  directory = Path(workdir)
  if (directory / "checkpoints").is_dir():
    directory = directory / "checkpoints"
  if not directory.is_dir():
    raise errors.DataNotFoundError(f"no checkpoints in {workdir}; train first with "
                                   "python -m jaxdl.train --config ... --workdir it.")
  manager = ocp.CheckpointManager(directory.absolute(),
                                  item_handlers=ocp.StandardCheckpointHandler(),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  steps = sorted(manager.all_steps())
  if not steps:
    raise errors.DataNotFoundError(f"no checkpoints in {directory}.")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise errors.ConfigError(f"no checkpoint for step {step} in {directory}; it has "
                             f"{', '.join(map(str, steps))}.")
  # Restore onto this process's first device, whatever the topology that saved it.
  meta = manager.item_metadata(step)
  meta = getattr(meta, "tree", meta)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), meta,
      is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
  raw = manager.restore(step, args=ocp.args.StandardRestore(target))
  manager.close()
  raw = jax.device_get(raw)
  return {"params": raw["params"], **(raw.get("model_state") or {})}
