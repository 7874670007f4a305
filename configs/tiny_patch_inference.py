"""MCUNetV2 patch-based inference settings for the efficiency report.

  python -m jaxdl.efficiency.report --config configs/tiny_patch_inference.py:mbv2_035
  python -m jaxdl.efficiency.report --config configs/tiny_patch_inference.py:mcunet_in3_rd

Variants: mbv2_035 (default; MobileNetV2 w0.35 at 144, MCUNet's baseline), mbv2_100
(w1.0 at 224, MCUNetV2's 8x example), mcunet_in3 (MCUNet 320kB ImageNet model at 176), each
with a `_rd` twin that applies MCUNetV2's receptive-field redistribution, and runlocal (a
seconds-long smoke run). All use 4x4 patches and int8 activations; `split` is the first block
run layer by layer (before redistribution; the report prints the split it uses).
"""

import ml_collections

_VARIANTS = {
    "mbv2_035": dict(model="mobilenetv2_035", resolution=144, split=4),
    "mbv2_100": dict(model="mobilenetv2_100", resolution=224, split=4),
    # The best split of the original MCUNet: its 7x7 early kernels make wide halos.
    "mcunet_in3": dict(model="mcunet_in3", resolution=176, split=6),
    "runlocal": dict(model="mcunet_in0", resolution=48, split=5, patches=3),
}
_REDISTRIBUTE = {
    # Kernels 3 in the patch stage, its last residual block moved after the split, the first
    # two per-layer blocks with 5x5 kernels.
    "mbv2_035_rd": ("mbv2_035", dict(move_blocks=1)),
    "mbv2_100_rd": ("mbv2_100", dict(move_blocks=1)),
    # All residual blocks of the first 9 moved after the split (new split 4).
    "mcunet_in3_rd": ("mcunet_in3", dict(split=9, move_blocks=9)),
}


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = arg or "mbv2_035"
  c = ml_collections.ConfigDict(dict(
      model="mobilenetv2_035", resolution=144, split=4, patches=4, dtype="int8",
      redistribute=False, patch_kernel=3, move_blocks=1, later_kernel=5, later_blocks=2))
  if arg in _VARIANTS:
    c.update(_VARIANTS[arg])
  elif arg in _REDISTRIBUTE:
    base, extra = _REDISTRIBUTE[arg]
    c.update(_VARIANTS[base])
    c.update(dict(redistribute=True, **extra))
  else:
    raise ValueError(f"unknown variant {arg!r}; choose one of "
                     f"{', '.join(sorted(_VARIANTS) + sorted(_REDISTRIBUTE))}.")
  return c
