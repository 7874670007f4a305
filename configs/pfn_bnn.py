r"""PFN on a BNN classification prior (Müller et al. 2022, section 5.2) on the generic loop.

  python -m jaxdl.train --config configs/pfn_bnn.py --workdir /tmp/pfn_bnn
  python tools/pfn_export.py --workdir /tmp/pfn_bnn --name bnn_cls
  python tools/bench_pfn.py nuts --weights bnn_cls --sizes 5,20,50   # PFN vs NumPyro NUTS

The shipped `bnn_cls` weights are this run at step 1,750 (RESULTS.md).

Prior: x ~ N(0, I_3); a tanh MLP 3-8-8-2 with weights N(0, 1/fan_in) and biases N(0, 1)
(jaxdl.models "mlp", drawn by jaxdl.inference.pfn.bnn_classification_prior); labels ~
Categorical(softmax(3 * mlp(x))). 64 rows per dataset of which 4..50 are the context.
Model: emsize 128, 4 layers (the paper's BNN PFN: emsize 256, 5 layers, lr 2e-5 on a GPU).
"""

from jaxdl.train.defaults import default_config

PRIOR = {"kind": "bnn_classification", "hidden": (8, 8), "activation": "tanh",
         "num_classes": 2, "weight_std": 1.0, "bias_std": 1.0, "logit_scale": 3.0}


def get_config(arg=None):
  c = default_config()
  c.model.name = "pfn_small"
  c.model.num_classes = 2
  c.dataset.name = "pfn_prior"
  c.dataset.eval_split = ""
  c.dataset.augment = "none"
  c.dataset.kwargs.prior = dict(PRIOR)
  c.dataset.kwargs.seed = 0
  c.dataset.kwargs.prng = "rbg"  # Fast random bits on CPU (see jaxdl.train.pfn).
  c.dataset.kwargs.seq_len = 64
  c.dataset.kwargs.num_features = 3
  c.dataset.kwargs.min_context = 4
  c.dataset.kwargs.max_context = 50
  c.loss = "pfn_cross_entropy"
  c.batch_size = 16
  c.num_train_steps = 2000
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 3e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 200
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 1.0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 250
  c.keep_checkpoints = 2
  if arg == "runlocal":
    c.model.num_layers = 1
    c.dataset.kwargs.seq_len = 24
    c.dataset.kwargs.max_context = 16
    c.batch_size = 4
    c.num_train_steps = 10
    c.optimizer.warmup_steps = 2
    c.log_every_steps = 5
    c.checkpoint_every_steps = 5
  return c
