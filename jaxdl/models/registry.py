"""Model registry: `create(name, **overrides)` and `list_models()`.

Each family file in `jaxdl/models/` registers its variants at import time, e.g.

  ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)
  register("resnet50", ResNet50, family="resnet")

Every module under `jaxdl.models` is imported the first time the registry is queried, so a
new family file needs no edit anywhere else.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from typing import Any, Callable

import flax.linen as nn

from jaxdl import errors

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], str]] = {}
_DISCOVERED = False


def register(name: str, factory: Callable[..., nn.Module] | None = None, *,
             family: str | None = None):
  """Registers `factory` (a Module class or a `functools.partial` of one) under `name`.

  Usable as `register("mlp", MLP)` or as a decorator `@register("mlp")`.
  """
  def _register(f):
    if name in _REGISTRY and _REGISTRY[name][0] is not f:
      raise ValueError(f"model name {name!r} is registered twice")
    _REGISTRY[name] = (f, family or name)
    return f
  return _register(factory) if factory is not None else _register


def _discover():
  global _DISCOVERED
  if _DISCOVERED:
    return
  _DISCOVERED = True
  import jaxdl.models as pkg
  for info in pkgutil.iter_modules(pkg.__path__):
    if not info.name.startswith("_") and info.name != "registry":
      importlib.import_module(f"jaxdl.models.{info.name}")


def list_models(family: str | None = None) -> list[str]:
  """Names of all registered models (optionally of one family), sorted."""
  _discover()
  return sorted(n for n, (_, fam) in _REGISTRY.items() if family in (None, fam))


def family_of(name: str) -> str:
  """The family ("resnet", "densenet", ...) a registered model belongs to."""
  _discover()
  if name not in _REGISTRY:
    raise errors.unknown_name("model", name, _REGISTRY)
  return _REGISTRY[name][1]


def _module_fields(factory) -> set[str]:
  cls = factory
  while isinstance(cls, functools.partial):
    cls = cls.func
  if dataclasses.is_dataclass(cls):
    return {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  return set()


def create(name: str, **overrides: Any) -> nn.Module:
  """Builds the registered model `name`, with `overrides` replacing its defaults.

  Raises `UnknownNameError` for an unregistered name and `ConfigError` for an override the
  model does not have, each with a one-line message listing the valid choices.
  """
  _discover()
  if name not in _REGISTRY:
    raise errors.unknown_name("model", name, _REGISTRY)
  factory, _ = _REGISTRY[name]
  fields = _module_fields(factory)
  unknown = sorted(set(overrides) - fields) if fields else []
  if unknown:
    raise errors.ConfigError(
        f"model {name!r} has no option(s) {', '.join(unknown)}; "
        f"its options are: {', '.join(sorted(fields))}.")
  return factory(**overrides)
