r"""GP-regression PFN (Müller et al. 2022, section 5.1) on the generic loop: the shipped model.

  python -m jaxdl.train --config configs/pfn_gp.py --workdir /tmp/pfn_gp
  python tools/pfn_export.py --workdir /tmp/pfn_gp --name gp_rbf   # -> jaxdl/inference/pfn_weights/

Prior: x ~ U[0, 1] (one feature), f ~ GP(0, RBF(lengthscale 0.2, variance 1)), y = f(x) +
N(0, 0.1); 48 rows per dataset of which 0..32 are the context. Model "pfn_gp" (emsize 128,
4 layers, 4 heads, MLP 256, 500 Riemann buckets). The paper's GP experiment used 5 features,
lengthscale 0.6, noise 1e-4, a 6-layer emsize-512 model and a GPU; this is the CPU-sized
1-D version. `:runlocal` is a smoke run of a few steps with a tiny model.
"""

from jaxdl.train.defaults import default_config


def get_config(arg=None):
  c = default_config()
  c.model.name = "pfn_gp"
  c.dataset.name = "pfn_prior"
  c.dataset.eval_split = ""  # Every batch is fresh: the training loss is the held-out loss.
  c.dataset.augment = "none"
  c.dataset.kwargs.prior = {"kind": "gp", "kernel": "rbf", "lengthscale": 0.2,
                            "variance": 1.0, "noise_variance": 0.1, "x_min": 0.0,
                            "x_max": 1.0}
  c.dataset.kwargs.seed = 0
  c.dataset.kwargs.seq_len = 48
  c.dataset.kwargs.num_features = 1
  c.dataset.kwargs.min_context = 0
  c.dataset.kwargs.max_context = 32
  c.dataset.kwargs.num_buckets = 500
  c.dataset.kwargs.border_samples = 200_000
  c.loss = "bar_nll"
  c.batch_size = 32
  c.num_train_steps = 8_000
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 5e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 300
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 1.0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 250
  c.keep_checkpoints = 2
  if arg == "runlocal":
    c.model.name = "pfn_small"
    c.model.num_classes = 100
    c.model.num_layers = 2
    c.dataset.kwargs.num_buckets = 100
    c.dataset.kwargs.border_samples = 20_000
    c.dataset.kwargs.seq_len = 32
    c.dataset.kwargs.max_context = 20
    c.batch_size = 8
    c.num_train_steps = 20
    c.optimizer.warmup_steps = 5
    c.log_every_steps = 5
    c.checkpoint_every_steps = 10
  return c
