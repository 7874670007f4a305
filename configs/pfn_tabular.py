r"""TabPFN-style classifier PFN (Hollmann et al. 2023) on the generic loop.

  python -m jaxdl.train --config configs/pfn_tabular.py --workdir /tmp/pfn_tabular
  python tools/pfn_export.py --workdir /tmp/pfn_tabular --name tabular --max_context 1000

Prior: the SCM / random-MLP classification prior of jaxdl/inference/pfn_tabular.py, up to 100
features (zero-padded) and 10 classes; 128 rows per dataset of which 8..100 are the context.
Model: emsize 128, 4 layers, 4 heads, MLP 256 (TabPFN v1: emsize 512, 12 layers, 1024 rows;
this is what a shared 2-core CPU can train in hours). The full-size recipe for an accelerator
is `:full` (emsize 512, 12 layers, 1024 rows, batch 64, 100k steps). `:runlocal` is a smoke
run. The shipped `tabular` weights are the default config at step 1,000 of 3,000 (about
4.7 s per step on the shared CPU; RESULTS.md).
"""

from jaxdl.train.defaults import default_config


def get_config(arg=None):
  c = default_config()
  c.model.name = "pfn_tabular"
  c.model.num_classes = 10
  c.model.emsize = 128
  c.model.num_layers = 4
  c.model.hidden = 256
  c.model.decoder_hidden = 256
  c.dataset.name = "pfn_prior"
  c.dataset.eval_split = ""
  c.dataset.augment = "none"
  c.dataset.kwargs.prior = {"kind": "scm", "max_features": 100, "max_classes": 10}
  c.dataset.kwargs.seed = 0
  c.dataset.kwargs.prng = "rbg"  # Fast random bits on CPU (see jaxdl.train.pfn).
  c.dataset.kwargs.seq_len = 128
  c.dataset.kwargs.num_features = 100
  c.dataset.kwargs.min_context = 8
  c.dataset.kwargs.max_context = 100
  c.loss = "pfn_cross_entropy"
  c.batch_size = 16
  c.num_train_steps = 3000
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 3e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 300
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 1.0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 250
  c.keep_checkpoints = 2
  if arg == "full":
    c.model.emsize = 512
    c.model.num_layers = 12
    c.model.hidden = 1024
    c.model.decoder_hidden = 1024
    c.dataset.kwargs.seq_len = 1024
    c.dataset.kwargs.max_context = 1000
    c.batch_size = 64
    c.num_train_steps = 100_000
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 2000
  elif arg == "runlocal":
    c.model.emsize = 32
    c.model.num_layers = 1
    c.model.hidden = 64
    c.model.decoder_hidden = 64
    c.dataset.kwargs.prior = {"kind": "scm", "max_features": 8, "max_classes": 4,
                              "width": 16}
    c.dataset.kwargs.num_features = 8
    c.model.num_classes = 4
    c.dataset.kwargs.seq_len = 24
    c.dataset.kwargs.max_context = 16
    c.batch_size = 4
    c.num_train_steps = 10
    c.optimizer.warmup_steps = 2
    c.log_every_steps = 5
    c.checkpoint_every_steps = 5
  return c
