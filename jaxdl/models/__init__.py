"""Pure Flax Linen models, one family per file, behind one registry.

  model = jaxdl.models.create("resnet18", num_classes=10)
  variables = model.init(rng, x)            # x: [batch, height, width, channels]
  logits = model.apply(variables, x, train=False)
"""

from jaxdl.models.registry import create, family_of, list_models, register

__all__ = ["create", "family_of", "list_models", "register"]
