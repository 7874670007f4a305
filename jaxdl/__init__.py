"""jaxdl: train, sample and dissect modern deep networks in JAX/Flax at accelerator speed."""

__version__ = "0.1.0"
