"""Trainer registry: `config.trainer` names the entry point `fn(config, workdir) -> dict`.

Every module in `jaxdl/train/` is imported on the first lookup, so a topic registers its
trainers, losses and probes in `jaxdl/train/<topic>.py` and edits nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

from jaxdl import errors

_TRAINERS: dict[str, Callable] = {}
_DISCOVERED = False
_CORE = {"__main__", "trainers", "losses", "probes", "defaults"}


def discover():
  """Imports every module of jaxdl.train (they register trainers, losses and probes)."""
  global _DISCOVERED
  if _DISCOVERED:
    return
  _DISCOVERED = True
  import jaxdl.train as pkg
  for mod in pkgutil.iter_modules(pkg.__path__):
    if not mod.name.startswith("_") and mod.name not in _CORE:
      importlib.import_module(f"jaxdl.train.{mod.name}")


def register_trainer(name: str):
  """Decorator registering `fn(config, workdir) -> dict of final metrics` under `name`."""
  def _register(fn):
    _TRAINERS[name] = fn
    return fn
  return _register


def get_trainer(name: str) -> Callable:
  discover()
  if name not in _TRAINERS:
    raise errors.unknown_name("trainer", name, _TRAINERS)
  return _TRAINERS[name]


def list_trainers() -> list[str]:
  discover()
  return sorted(_TRAINERS)
