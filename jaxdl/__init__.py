"""jaxdl: train, sample and dissect modern deep networks in JAX/Flax at accelerator speed."""

__version__ = "0.1.0"

_LAZY = {
    "PFNRegressor": "jaxdl.inference.pfn_sklearn",
    "PFNClassifier": "jaxdl.inference.pfn_sklearn",
}


def __getattr__(name):
  # Heavy submodules load on first use, so `import jaxdl` stays fast.
  if name in _LAZY:
    import importlib
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'jaxdl' has no attribute {name!r}")
