"""jaxdl.inference."""
