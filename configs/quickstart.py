r"""Quickstart: a small CNN on scikit-learn's digits (bundled: no download, no data folder).

  python -m jaxdl.train --config configs/quickstart.py --workdir /tmp/jaxdl_quickstart

Reaches about 98% test accuracy in well under a minute on 2 CPU cores. `:runlocal` shrinks
it further (a smoke test).
"""

from jaxdl.train.defaults import default_config


def get_config(arg=None):
  c = default_config()
  c.model.name = "cnn_small"
  c.dataset.name = "digits"
  c.batch_size = 64
  c.eval_batch_size = 512
  c.num_epochs = 40.0
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 3e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 1e-4
  c.log_every_steps = 100
  c.eval_every_steps = 300
  c.checkpoint_every_steps = 300
  if arg == "runlocal":
    c.num_epochs = 2.0
    c.eval_every_steps = 20
    c.checkpoint_every_steps = 20
    c.log_every_steps = 10
  return c
