"""jaxdl.efficiency: patch-based inference, receptive fields and activation memory (MCUNetV2).

  from jaxdl.efficiency import patch_apply, activation_memory
  logits = patch_apply(model, variables, x, split=4, num_patches=4)   # == model.apply(...)
  activation_memory(model, variables, x.shape)["peak_bytes"]           # layer by layer
  activation_memory(model, variables, x.shape, split=4, num_patches=4)  # patch-based

See `patch_inference` (the algorithm), `memory` (computed and XLA-measured memory),
`receptive_field`, `redistribute` (MCUNetV2's receptive-field redistribution) and `report`
(the `python -m jaxdl.efficiency.report` CLI).
"""

from jaxdl.efficiency.memory import activation_memory, measured_memory, plot_memory
from jaxdl.efficiency.patch_inference import mac_overhead, patch_apply
from jaxdl.efficiency.receptive_field import block_fields, receptive_fields
from jaxdl.efficiency.redistribute import Redistribution, redistribute

__all__ = ["activation_memory", "measured_memory", "plot_memory", "patch_apply", "mac_overhead",
           "receptive_fields", "block_fields", "redistribute", "Redistribution"]
