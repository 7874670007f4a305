"""jaxdl.efficiency."""
