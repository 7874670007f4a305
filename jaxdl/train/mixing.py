"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on the device, as timm applies them.

With both enabled, each batch uses one of the two with probability 1/2 (timm's switch_prob).
The batch is mixed with its reverse (timm's "batch" mode); targets become soft.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _cutmix_mask(rng, lam, h, w):
  """A box covering about 1 - lam of the image: mask [h, w] (1 inside) and the exact lam."""
  cut = jnp.sqrt(1.0 - lam)
  ch, cw = (h * cut).astype(jnp.int32), (w * cut).astype(jnp.int32)
  ky, kx = jax.random.split(rng)
  cy = jax.random.randint(ky, (), 0, h)
  cx = jax.random.randint(kx, (), 0, w)
  y1, y2 = jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h)
  x1, x2 = jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w)
  rows = (jnp.arange(h) >= y1) & (jnp.arange(h) < y2)
  cols = (jnp.arange(w) >= x1) & (jnp.arange(w) < x2)
  mask = (rows[:, None] & cols[None, :]).astype(jnp.float32)
  return mask, 1.0 - jnp.mean(mask)


def mix(rng, inputs, soft_targets, *, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
  """Mixes a batch: inputs [B, H, W, C], soft_targets [B, K] -> mixed (inputs, targets)."""
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return inputs, soft_targets
  k_lam_m, k_lam_c, k_box, k_switch = jax.random.split(rng, 4)
  other_x, other_y = inputs[::-1], soft_targets[::-1]
  h, w = inputs.shape[1:3]

  def do_mixup():
    lam = jax.random.beta(k_lam_m, mixup_alpha, mixup_alpha)
    return lam * inputs + (1 - lam) * other_x, lam

  def do_cutmix():
    lam = jax.random.beta(k_lam_c, cutmix_alpha, cutmix_alpha)
    mask, lam = _cutmix_mask(k_box, lam, h, w)
    m = mask[None, :, :, None].astype(inputs.dtype)
    return inputs * (1 - m) + other_x * m, lam

  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.bernoulli(k_switch, 0.5)
    x_m, lam_m = do_mixup()
    x_c, lam_c = do_cutmix()
    x = jnp.where(use_cutmix, x_c, x_m)
    lam = jnp.where(use_cutmix, lam_c, lam_m)
  elif mixup_alpha > 0:
    x, lam = do_mixup()
  else:
    x, lam = do_cutmix()
  lam = lam.astype(jnp.float32)
  return x, lam * soft_targets + (1 - lam) * other_y
