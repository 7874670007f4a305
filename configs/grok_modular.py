r"""Grokking on modular addition mod 97: a ReLU MLP on one-hot pairs, AdamW with weight decay.

  python -m jaxdl.train --config configs/grok_modular.py --workdir /tmp/grok_modular
  python tools/plot_grokking.py /tmp/grok_modular --out docs/figures/grok_modular.png

The classic algorithmic grokking task (Power et al., "Grokking", 2022): learn (a + b) mod 97
from a random 30% of the 97^2 pairs; the training accuracy reaches 100% long before the test
accuracy rises. The model is a piecewise-linear MLP (so its local complexity can be tracked,
Humayun et al., ICML 2024) on the concatenated one-hot codes of a and b, trained full-batch-ish
with AdamW and strong weight decay (Power et al. use weight decay 1; Liu et al., "Omnigrok",
relate the delay to the weight norm). Cross-entropy loss.

`:runlocal` is a CPU smoke run.
"""

from jaxdl.train.defaults import default_config


def get_config(arg=None):
  c = default_config()
  c.seed = 0
  c.model.name = "mlp"
  c.model.features = (256,)
  c.model.activation = "relu"
  c.model.sow_logits = True
  c.dataset.name = "modular_addition"
  c.dataset.kwargs.modulus = 97
  c.dataset.kwargs.train_fraction = 0.3
  c.dataset.kwargs.seed = 0
  c.dataset.augment = "none"
  c.batch_size = 512
  c.eval_batch_size = 2048
  c.num_train_steps = 100_000
  c.loss = "cross_entropy"
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 1.0
  c.optimizer.b2 = 0.98
  c.log_every_steps = 500
  c.eval_schedule = "log"
  c.num_eval_points = 60
  c.checkpoint_every_steps = 10_000
  c.probes = "grok_accuracy,local_complexity"
  c.probe_kwargs.lc_radii = (0.1, 1.0)
  c.probe_kwargs.lc_num_directions = 25
  c.probe_kwargs.lc_num_points = 1000
  c.probe_kwargs.lc_sets = "train,test,random"
  if arg == "runlocal":
    c.num_train_steps = 100
    c.num_eval_points = 3
    c.log_every_steps = 50
    c.checkpoint_every_steps = 100
    c.probe_kwargs.lc_num_points = 32
    c.probe_kwargs.lc_num_directions = 4
  return c
