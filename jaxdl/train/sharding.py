"""Device mesh and shardings for data-parallel (and FSDP / tensor-parallel) training.

The mesh has axes ("data", "model"). Batches are sharded over "data". Each array of the
train state (parameters and optimizer moments alike, so the rule works leaf by leaf on
shapes) is
  replicate: replicated on every device;
  fsdp:      split along its largest dimension divisible by the "data" axis size (arrays
             smaller than `min_fsdp_size` stay replicated);
and, where the "model" axis has more than one device, its last dimension is split over
"model" when divisible (kernels' output features).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdl import errors

MIN_FSDP_SIZE = 2 ** 14


def make_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
  """A ("data", "model") mesh over `devices` (default: all); -1 means "the rest"."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  model = int(model)
  data = n // model if int(data) == -1 else int(data)
  if model < 1 or data < 1 or data * model != n:
    raise errors.ConfigError(
        f"config.mesh data={data} x model={model} does not match the {n} devices; use "
        f"data * model = {n} (data=-1 fills in the rest).")
  return Mesh(np.asarray(devices).reshape(data, model), ("data", "model"))


def array_spec(shape, mesh: Mesh, mode: str = "replicate",
               min_fsdp_size: int = MIN_FSDP_SIZE) -> P:
  """The PartitionSpec of one state array of `shape` (see the module docstring)."""
  spec = [None] * len(shape)
  n_model = mesh.shape["model"]
  if n_model > 1 and len(shape) >= 2 and shape[-1] % n_model == 0:
    spec[-1] = "model"
  n_data = mesh.shape["data"]
  if mode == "fsdp" and n_data > 1 and math.prod(shape) >= min_fsdp_size:
    free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % n_data == 0]
    if free:
      spec[max(free, key=lambda i: shape[i])] = "data"
  elif mode not in ("replicate", "fsdp"):
    raise errors.ConfigError(f"config.param_sharding={mode!r} is unknown; use 'replicate' or "
                             "'fsdp'.")
  return P(*spec)


def state_shardings(abstract_state, mesh: Mesh, mode: str = "replicate"):
  """NamedShardings for every leaf of an abstract (eval_shape) state."""
  return jax.tree.map(lambda x: NamedSharding(mesh, array_spec(x.shape, mesh, mode)),
                      abstract_state)


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Examples split over "data"; `stacked`: batches of several steps stacked on axis 0, the
  examples on axis 1."""
  return NamedSharding(mesh, P(None, "data") if stacked else P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch, mesh: Mesh, stacked: bool = False):
  """This host's numpy batch -> global jax arrays sharded over "data" (process order);
  `stacked`: several steps' batches on axis 0 (see batch_sharding)."""
  sharding = batch_sharding(mesh, stacked)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size"):
  n = mesh.shape["data"]
  if batch_size <= 0 or batch_size % n:
    raise errors.ConfigError(
        f"config.{name}={batch_size} must be a positive multiple of the {n} data-parallel "
        f"devices; use e.g. {max(n, (max(batch_size, 1) // n) * n)}.")
