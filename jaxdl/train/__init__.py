"""jaxdl.train."""
