"""Dataset loaders (offline files, scikit-learn, TFDS, synthetic) and the input pipeline.

  train = jaxdl.data.load("cifar10", "train")   # {"inputs": uint8 [N,32,32,3], "targets": [N]}
  info = jaxdl.data.get_info("cifar10")

Every module under `jaxdl.data` registers its datasets at import time.
"""

from jaxdl.data.registry import (DatasetInfo, cache_dir, data_dirs, find_file, get_info,
                                 list_datasets, load, register)

__all__ = ["DatasetInfo", "cache_dir", "data_dirs", "find_file", "get_info", "list_datasets",
           "load", "register"]
