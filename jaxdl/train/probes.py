"""Probe registry: measurements taken at evaluation steps and written to metrics.jsonl.

  @probes.register("name")
  def factory(config, model, datasets, preprocess):
    # datasets: {"train": {...}, "test": {...}} numpy arrays; preprocess: raw -> model input
    def probe(variables, step) -> dict[str, float]: ...
    return probe
"""

from __future__ import annotations

from typing import Callable

from jaxdl import errors

_PROBES: dict[str, Callable] = {}


def register(name: str):
  def _register(factory):
    _PROBES[name] = factory
    return factory
  return _register


def get(name: str) -> Callable:
  from jaxdl.train.trainers import discover
  discover()
  if name not in _PROBES:
    raise errors.unknown_name("probe", name, _PROBES)
  return _PROBES[name]


def parse(spec: str) -> list[str]:
  return [s.strip() for s in (spec or "").split(",") if s.strip()]
