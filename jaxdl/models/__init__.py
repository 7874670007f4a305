"""Pure Flax Linen models, one family per file, behind one registry.

  model = jaxdl.models.create("resnet18", num_classes=10)
  variables = model.init(rng, x)            # x: [batch, height, width, channels]
  logits = model.apply(variables, x, train=False)
"""

from jaxdl.models.registry import create, family_of, list_models, register

__all__ = ["create", "family_of", "list_models", "register", "load_timm_state_dict"]


def __getattr__(name):
  if name == "load_timm_state_dict":
    from jaxdl.models.timm_convert import load_timm_state_dict
    return load_timm_state_dict
  raise AttributeError(f"module 'jaxdl.models' has no attribute {name!r}")
