"""Adversarial examples: FGSM and PGD (L-inf and L2), and adversarial accuracy.

FGSM: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples" (2015),
x' = x + eps sign(grad_x L). PGD: Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks" (2018): from a random start in the eps-ball, `num_steps` ascent steps on
the cross-entropy, each followed by projection onto the eps-ball around x and clipping to the
data range [clip_min, clip_max]. L-inf steps move by step_size sign(g); L2 steps by
step_size g / ||g||. This is the attack of the grokking paper's delayed-robustness experiments
(AhmedImtiazPrio/grok-adversarial `attacks.py::PGD`, after torchattacks).

All functions are pure in (variables, x, y) and jit-compiled, with `apply_fn` static: pass the
same function object (e.g. `model.apply`) across calls to reuse the compilation.
`apply_fn(variables, x)` must return logits [N, K]; gradients are taken with respect to x in
whatever space `apply_fn` takes (wrap the model to attack raw pixels in [0, 1]).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdl import errors

_NORMS = ("linf", "l2")


def _check(norm, eps, step_size=None, num_steps=None):
  if norm not in _NORMS:
    raise errors.unknown_name("attack norm", norm, _NORMS)
  if not eps >= 0:
    raise errors.ConfigError(f"eps must be >= 0, got {eps}; pass e.g. eps=8/255.")
  if step_size is not None and not step_size > 0:
    raise errors.ConfigError(f"step_size must be > 0, got {step_size}; pass e.g. 2/255.")
  if num_steps is not None and (int(num_steps) != num_steps or num_steps < 0):
    raise errors.ConfigError(f"num_steps must be a non-negative integer, got {num_steps}.")


def _per_example_norm(v):
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim)), keepdims=True))


def _input_grad(apply_fn, variables, x, y):
  def loss(xs):
    logits = apply_fn(variables, xs)
    # Sum, not mean: each example's gradient does not depend on the batch size.
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                                   y))
  return jax.grad(loss)(x)


def _clip(x, clip_min, clip_max):
  if clip_min is None and clip_max is None:
    return x
  return jnp.clip(x, clip_min, clip_max)


def _project(x_adv, x, eps, norm):
  delta = x_adv - x
  if norm == "linf":
    delta = jnp.clip(delta, -eps, eps)
  else:
    delta = delta * jnp.minimum(1.0, eps / (_per_example_norm(delta) + 1e-12))
  return x + delta


def _ascent(g, step, norm):
  if norm == "linf":
    return step * jnp.sign(g)
  return step * g / (_per_example_norm(g) + 1e-12)


def fgsm(apply_fn: Callable, variables, x: jax.Array, y: jax.Array, *, eps: float,
         norm: str = "linf", clip_min: float | None = None,
         clip_max: float | None = None) -> jax.Array:
  """One gradient-sign (L-inf) or normalized-gradient (L2) step of size eps.

  Args:
    apply_fn: `apply_fn(variables, x) -> logits [N, K]`.
    x: [N, ...] inputs; y: [N] integer labels.
    eps: step size = radius of the ball.
    clip_min, clip_max: data range to clip to (None: no clipping).
  Returns:
    x_adv, same shape and dtype as x.
  """
  _check(norm, eps)
  return _fgsm(apply_fn, variables, jnp.asarray(x), jnp.asarray(y), eps, clip_min, clip_max,
               norm=norm)


@functools.partial(jax.jit, static_argnames=("apply_fn", "norm"))
def _fgsm(apply_fn, variables, x, y, eps, clip_min, clip_max, *, norm):
  g = _input_grad(apply_fn, variables, x, y)
  return _clip(x + _ascent(g, eps, norm).astype(x.dtype), clip_min, clip_max)


def pgd(apply_fn: Callable, variables, x: jax.Array, y: jax.Array, *, eps: float,
        step_size: float, num_steps: int, norm: str = "linf",
        rng_key: jax.Array | None = None, clip_min: float | None = None,
        clip_max: float | None = None) -> jax.Array:
  """Projected gradient ascent on the cross-entropy within the eps-ball around x.

  Args:
    apply_fn: `apply_fn(variables, x) -> logits [N, K]`.
    x: [N, ...] inputs; y: [N] integer labels.
    eps: radius of the L-inf or L2 ball.
    step_size: size of each ascent step (L-inf: per coordinate; L2: Euclidean).
    num_steps: number of ascent steps.
    norm: "linf" or "l2".
    rng_key: when given, start at a uniformly random point of the ball (L-inf: uniform
      per coordinate; L2: a random direction at a uniform fraction of eps, as torchattacks);
      None starts at x.
    clip_min, clip_max: data range (None: no clipping); every iterate stays in it.
  Returns:
    x_adv [N, ...] with ||x_adv - x|| <= eps and x_adv within [clip_min, clip_max].
  """
  _check(norm, eps, step_size, num_steps)
  x = jnp.asarray(x)
  return _pgd(apply_fn, variables, x, jnp.asarray(y), eps, step_size, rng_key, clip_min,
              clip_max, num_steps=int(num_steps), norm=norm)


@functools.partial(jax.jit, static_argnames=("apply_fn", "num_steps", "norm"))
def _pgd(apply_fn, variables, x, y, eps, step_size, rng_key, clip_min, clip_max, *,
         num_steps, norm):
  eps = jnp.asarray(eps, x.dtype)
  x_adv = x
  if rng_key is not None:
    if norm == "linf":
      delta = jax.random.uniform(rng_key, x.shape, x.dtype, -1.0, 1.0) * eps
    else:
      k1, k2 = jax.random.split(rng_key)
      d = jax.random.normal(k1, x.shape, x.dtype)
      r = jax.random.uniform(k2, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
      delta = d / (_per_example_norm(d) + 1e-12) * r * eps
    x_adv = _clip(x + delta, clip_min, clip_max)

  def body(_, xa):
    g = _input_grad(apply_fn, variables, xa, y)
    xa = xa + _ascent(g, step_size, norm).astype(x.dtype)
    return _clip(_project(xa, x, eps, norm), clip_min, clip_max)

  return jax.lax.fori_loop(0, num_steps, body, x_adv)


def adversarial_accuracy(apply_fn: Callable, variables, x, y, *, attack: str = "pgd",
                         batch_size: int = 256, rng_key: jax.Array | None = None,
                         **attack_kwargs) -> float:
  """Accuracy on adversarial examples, attacking `batch_size` inputs at a time.

  Args:
    apply_fn: `apply_fn(variables, x) -> logits [N, K]`.
    x: [N, ...] inputs (numpy or jax); y: [N] labels.
    attack: "pgd" or "fgsm"; `attack_kwargs` go to it (eps, step_size, num_steps, norm,
      clip_min, clip_max).
    rng_key: random start for PGD (folded with the batch index); None starts at x.
  Returns:
    fraction of examples still classified correctly after the attack.
  """
  attacks = {"pgd": pgd, "fgsm": fgsm}
  if attack not in attacks:
    raise errors.unknown_name("attack", attack, attacks)
  n = len(x)
  correct = 0
  for i, start in enumerate(range(0, n, batch_size)):
    xb = jnp.asarray(x[start:start + batch_size])
    yb = jnp.asarray(y[start:start + batch_size])
    if attack == "pgd":
      key = None if rng_key is None else jax.random.fold_in(rng_key, i)
      xa = pgd(apply_fn, variables, xb, yb, rng_key=key, **attack_kwargs)
    else:
      xa = fgsm(apply_fn, variables, xb, yb, **attack_kwargs)
    pred = jnp.argmax(apply_fn(variables, xa), axis=-1)
    correct += int(jnp.sum(pred == yb))
  return correct / max(n, 1)


def accuracy(apply_fn: Callable, variables, x, y, *, batch_size: int = 1024) -> float:
  """Plain accuracy of `apply_fn(variables, x)` logits, `batch_size` inputs at a time."""
  n = len(x)
  correct = 0
  for start in range(0, n, batch_size):
    logits = apply_fn(variables, jnp.asarray(x[start:start + batch_size]))
    correct += int(np.sum(np.asarray(jnp.argmax(logits, -1)) ==
                          np.asarray(y[start:start + batch_size])))
  return correct / max(n, 1)
