"""Optimizer and learning-rate schedule from the `config.optimizer` block.

The transformation is one optax chain, in this order:
  add_noise (gradient noise, Neelakantan et al. 2015: variance eta / (1 + t)^gamma, on the
  raw gradient) -> clip_by_global_norm -> add_decayed_weights (coupled L2 for sgd/momentum/
  adam, as PyTorch's weight_decay) -> the optimizer scaled by the schedule.
AdamW's decay is decoupled (inside optax.adamw).
"""

from __future__ import annotations

import jax
import optax

from jaxdl import errors

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "lamb", "rmsprop", "adagrad")
SCHEDULES = ("constant", "cosine", "step", "linear")


def create_schedule(cfg, num_steps: int, steps_per_epoch: float | None = None):
  """The learning rate as a function of the step (an optax schedule)."""
  lr = float(cfg.learning_rate)
  warmup = int(cfg.warmup_steps)
  if not warmup and cfg.get("warmup_epochs", 0) and steps_per_epoch:
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
  warmup = min(warmup, max(num_steps - 1, 0))
  decay_steps = max(num_steps - warmup, 1)
  end = lr * float(cfg.get("end_learning_rate_factor", 0.0))
  if cfg.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
  elif cfg.schedule == "linear":
    main = optax.linear_schedule(lr, end, decay_steps)
  elif cfg.schedule == "step":
    bounds = {int(round(f * num_steps)) - warmup: float(cfg.decay_factor)
              for f in cfg.decay_boundaries}
    main = optax.piecewise_constant_schedule(lr, {b: f for b, f in bounds.items() if b > 0})
  else:
    raise errors.ConfigError(f"config.optimizer.schedule={cfg.schedule!r} is unknown; use one "
                             f"of {', '.join(SCHEDULES)}.")
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _kernel_mask(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(cfg, num_steps: int, *, steps_per_epoch: float | None = None,
                     seed: int = 0):
  """Returns (optax GradientTransformation, schedule) for `config.optimizer`."""
  if cfg.name not in OPTIMIZERS:
    raise errors.ConfigError(f"config.optimizer.name={cfg.name!r} is unknown; use one of "
                             f"{', '.join(OPTIMIZERS)}.")
  if not float(cfg.learning_rate) >= 0:
    raise errors.ConfigError(f"config.optimizer.learning_rate={cfg.learning_rate} must be >= 0.")
  schedule = create_schedule(cfg, num_steps, steps_per_epoch)
  wd = float(cfg.weight_decay)
  mask = _kernel_mask if cfg.get("weight_decay_on", "all") == "kernels" else None
  chain = []
  if cfg.grad_noise_eta > 0:
    chain.append(optax.add_noise(float(cfg.grad_noise_eta), float(cfg.grad_noise_gamma), seed))
  if cfg.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(float(cfg.grad_clip_norm)))
  if wd > 0 and cfg.name not in ("adamw", "lamb"):
    chain.append(optax.add_decayed_weights(wd, mask))
  if cfg.name == "sgd":
    chain.append(optax.sgd(schedule))
  elif cfg.name == "momentum":
    chain.append(optax.sgd(schedule, momentum=float(cfg.momentum), nesterov=bool(cfg.nesterov)))
  elif cfg.name == "adam":
    chain.append(optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
  elif cfg.name == "adamw":
    chain.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd,
                             mask=mask))
  elif cfg.name == "lamb":
    chain.append(optax.lamb(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd,
                            mask=mask))
  elif cfg.name == "rmsprop":
    chain.append(optax.rmsprop(schedule, eps=cfg.eps, momentum=float(cfg.momentum) or None))
  elif cfg.name == "adagrad":
    chain.append(optax.adagrad(schedule, eps=cfg.eps))
  return optax.chain(*chain), schedule
