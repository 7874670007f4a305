"""The default supervised-training config: every field the generic loop reads.

Experiment configs start from `default_config()` and override fields, so every key exists
and can be changed from the command line (`--config.optimizer.learning_rate=0.1`).
"""

from __future__ import annotations

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = "supervised"
  c.seed = 0

  # Model: `name` plus any overrides passed to jaxdl.models.create (add keys as needed).
  c.model = ml_collections.ConfigDict({"name": "mlp"})
  c.dtype = "float32"  # Compute dtype ("bfloat16" for mixed precision); params stay float32.

  # Data.
  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "digits"
  c.dataset.data_dir = ""  # Empty: $JAXDL_DATA_DIR.
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"  # Empty: no evaluation.
  c.dataset.augment = "default"  # "default" (the dataset's), "none", "crop_flip", "flip".
  c.dataset.kwargs = ml_collections.ConfigDict()  # Loader options (e.g. UCI dataset name).

  # Length: num_train_steps if > 0, else num_epochs over the training split.
  c.batch_size = 128
  c.eval_batch_size = 512
  c.num_train_steps = -1
  c.num_epochs = 10.0

  # Objective.
  c.loss = "cross_entropy"
  c.label_smoothing = 0.0
  c.mixup_alpha = 0.0
  c.cutmix_alpha = 0.0

  # Optimizer (jaxdl/train/optim.py).
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # sgd | momentum | adam | adamw | lamb | rmsprop
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "constant"  # constant | cosine | step | linear
  c.optimizer.warmup_steps = 0
  c.optimizer.warmup_epochs = 0.0  # Converted to steps when warmup_steps is 0.
  c.optimizer.decay_boundaries = (0.5, 0.75)  # "step": fractions of training.
  c.optimizer.decay_factor = 0.1
  c.optimizer.end_learning_rate_factor = 0.0  # "cosine"/"linear": final lr / peak lr.
  c.optimizer.weight_decay = 0.0
  c.optimizer.weight_decay_on = "all"  # all | kernels (no decay on biases and norms)
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.grad_clip_norm = 0.0  # 0: no clipping.
  c.optimizer.grad_noise_eta = 0.0  # > 0: optax.add_noise(eta, gamma) before the optimizer.
  c.optimizer.grad_noise_gamma = 0.55

  # Logging, evaluation, checkpoints.
  c.log_every_steps = 50
  c.eval_every_steps = 0  # 0: evaluate only at the end ("linear" schedule).
  c.eval_schedule = "linear"  # linear | log (num_eval_points log-spaced steps, and step 0)
  c.num_eval_points = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.probes = ""  # Comma-separated probe names (jaxdl.train.probes), run at eval steps.
  c.probe_kwargs = ml_collections.ConfigDict()
  # Train steps per compiled call (a lax.scan over K batches): fewer dispatches, and on CPU
  # no per-step re-mapping of temporaries. Calls end at log / eval / checkpoint steps, which
  # should be multiples of it (others run one step per call). Same parameters as K = 1.
  c.steps_per_call = 1
  # jax's persistent compilation cache: "auto" (~/.cache/jaxdl/xla or $JAXDL_CACHE_DIR/xla), ""
  # (off) or a directory. A rerun or a resumed run loads its compiled steps from it (on a GPU
  # that skips minutes of XLA autotuning for RDNet and the DenseNets).
  c.compilation_cache = "auto"

  # Devices.
  c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})  # -1: all remaining devices.
  c.param_sharding = "replicate"  # replicate | fsdp
  return c
