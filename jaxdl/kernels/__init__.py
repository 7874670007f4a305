"""jaxdl.kernels."""
