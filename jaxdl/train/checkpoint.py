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
    return ocp.CheckpointManager(self.directory, options=options)

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
    except Exception:  # Unreadable metadata: treat as corruption in restore().
      return
    meta = getattr(meta, "tree", meta)
    try:
      saved = jax.tree.leaves(meta, is_leaf=lambda x: hasattr(x, "shape"))
    except Exception:
      return
    want = jax.tree.leaves(abstract_state)
    if saved and len(saved) == len(want):
      for s, w in zip(saved, want):
        if hasattr(s, "shape") and tuple(s.shape) != tuple(w.shape):
          raise errors.ConfigError(
              f"checkpoint step {step} in {self.directory} holds arrays of other shapes than "
              f"this run ({tuple(s.shape)} vs {tuple(w.shape)}): it belongs to another model or "
              "config; use a new --workdir or the config that wrote it.")
    elif saved:
      raise errors.ConfigError(
          f"checkpoint step {step} in {self.directory} has {len(saved)} arrays, this run "
          f"{len(want)}: it belongs to another model or config; use a new --workdir.")

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
