"""Config-driven training: `python -m jaxdl.train --config configs/X.py --workdir DIR`.

  from jaxdl.train import train_and_evaluate      # the generic supervised loop
  from jaxdl.train import register_trainer         # add an entry point for config.trainer
"""

from jaxdl.train.trainers import get_trainer, list_trainers, register_trainer

__all__ = ["get_trainer", "list_trainers", "register_trainer", "train_and_evaluate", "run"]


def __getattr__(name):
  if name == "train_and_evaluate":
    from jaxdl.train.loop import train_and_evaluate
    return train_and_evaluate
  raise AttributeError(f"module 'jaxdl.train' has no attribute {name!r}")


def run(config, workdir) -> dict:
  """Runs the trainer that `config.trainer` names (default "supervised"), with jax's
  persistent compilation cache in the directory `config.compilation_cache` names (default
  "auto": ~/.cache/jaxdl/xla or $JAXDL_CACHE_DIR/xla; "" turns it off; jaxdl.compiler)."""
  from jaxdl import compiler
  trainer = get_trainer(config.get("trainer", "supervised"))
  with compiler.compilation_cache(config.get("compilation_cache", "auto")):
    return trainer(config, workdir)
