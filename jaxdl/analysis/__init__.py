"""jaxdl.analysis."""
