"""Receptive-field redistribution (MCUNetV2 Sec. 3.2).

The MAC overhead of patch-based inference grows with the receptive field of the patch stage:
each patch recomputes a halo as wide as that receptive field. MCUNetV2 therefore moves
receptive field out of the patch stage into the per-layer stage: smaller kernels and fewer
blocks before the split, more (or larger-kernel) blocks after it, at about the same
computation. MCUNetV2 searches this jointly with the network (TinyNAS); here it is a
deterministic rewrite of an inverted-residual net's per-block lists, driven by config:

1. in the patch stage (blocks[:split]) every kernel larger than `patch_kernel` shrinks to it;
2. up to `move_blocks` residual blocks of the patch stage (stride 1, channels unchanged: they
   add receptive field but no resolution change) are removed, last first;
3. as many stride-1 residual blocks (same channels and expansion as the block they follow) are
   inserted right after the first block of the per-layer stage, at the low resolution;
4. kernels of the first `later_blocks` blocks of the per-layer stage grow to `later_kernel`.

The split moves back by the number of removed blocks, so the same stage output (resolution
and channels) is assembled from patches. The rewritten net has new weights: compare its
overhead and memory, and retrain it before comparing accuracy.
"""

from __future__ import annotations

import dataclasses

from jaxdl import errors


@dataclasses.dataclass(frozen=True)
class Redistribution:
  """Settings of the rewrite (see the module docstring)."""
  patch_kernel: int = 3
  move_blocks: int = 1
  later_kernel: int | None = 5
  later_blocks: int = 2


def redistribute_lists(kernel_sizes, expand_ratios, channels, strides, *, split: int,
                       settings: Redistribution = Redistribution()) -> tuple[dict, int]:
  """Rewrites per-block lists; returns (lists as a dict of tuples, new split)."""
  n = len(channels)
  if not 0 < split <= n:
    raise errors.ConfigError(f"split={split} must be in 1..{n} to redistribute; the patch stage "
                             f"needs at least one block.")
  blocks = [dict(k=k, e=e, c=c, s=s) for k, e, c, s in zip(kernel_sizes, expand_ratios,
                                                             channels, strides)]
  patch, later = blocks[:split], blocks[split:]
  for b in patch:
    b["k"] = min(b["k"], settings.patch_kernel)
  movable = [i for i in range(1, len(patch))
             if patch[i]["s"] == 1 and patch[i]["c"] == patch[i - 1]["c"]]
  moved = [patch[i] for i in movable[::-1][:settings.move_blocks]]
  patch = [b for b in patch if not any(b is m for m in moved)]
  if later:
    head = later[0]
    extra = [dict(k=head["k"], e=m["e"], c=head["c"], s=1) for m in moved]
    later = [head] + extra + later[1:]
    if settings.later_kernel:
      for b in later[:settings.later_blocks]:
        b["k"] = max(b["k"], settings.later_kernel)
  out = patch + later
  lists = {"kernel_sizes": tuple(b["k"] for b in out), "expand_ratios": tuple(b["e"] for b in out),
           "channels": tuple(b["c"] for b in out), "strides": tuple(b["s"] for b in out)}
  return lists, len(patch)


def redistribute(model, split: int, settings: Redistribution = Redistribution()):
  """The MCUNetV2-style redistributed variant of an `InvertedResidualNet` and its split.

  Returns (new_model, new_split): `new_model = model.clone(**new_lists)`.
  """
  for f in ("kernel_sizes", "expand_ratios", "channels", "strides"):
    if not hasattr(model, f):
      raise errors.ConfigError(f"redistribution needs a model with per-block lists "
                               f"(InvertedResidualNet: mobilenetv2_*, mcunet_*), got "
                               f"{type(model).__name__}.")
  lists, new_split = redistribute_lists(model.kernel_sizes, model.expand_ratios, model.channels,
                                        model.strides, split=split, settings=settings)
  return model.clone(**lists), new_split
