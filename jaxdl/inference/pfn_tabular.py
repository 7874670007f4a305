"""A TabPFN-style prior over tabular classification datasets (Hollmann et al., ICLR 2023).

TabPFN's prior (their section 4.2 and appendix C) draws a random structural causal model
(SCM) per dataset: a random sparse MLP-shaped graph whose nodes carry noisy values; features
and the target are read off random nodes (SCM mode) or the network's inputs and one output
(MLP mode); the continuous target is cut into classes at random boundaries; some features
are discretized into categories. This module is a compact JAX version with fixed shapes:

  per dataset:
    d ~ log-uniform{1..max_features} used features, C ~ {2 w.p. 1/2, else U{3..max_classes}}
    root causes z_0 ~ N(0, 1) [T, r]: r = d in MLP mode, r ~ U{1..max_causes} in SCM mode
    for l = 1..num_layers (random in [1, max_layers]):
      z_l = std(act(z_{l-1} W_l + b_l) + eps_l),  W_l ~ N(0, w_std^2 / fan_in) * Bernoulli(keep),
      act per dataset from {tanh, relu, identity, leaky relu, sin}, eps_l ~ N(0, noise_std^2)
    SCM mode (prob. scm_prob): x = d random nodes of z_1..z_L, target = another random node
    MLP mode: x = the d root causes z_0, target = a random node of z_L
    classes: C - 1 boundaries at the target values of random rows; class = rank among them,
      then a random permutation of the class ids
    a fraction of the features (cat_prob each) discretized into 2..10 random-quantile bins
    features standardized per dataset, soft-clipped beyond 4 standard deviations, unused
    features set to 0 and the used ones scaled by sqrt(max_features / d)

Returns the usual `sample_batch(rng_key, batch_size, seq_len, num_features)`; `num_features`
must equal `max_features` (the padded width the network sees).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxdl import errors

_ACTS = (jnp.tanh, jax.nn.relu, lambda z: z, lambda z: jax.nn.leaky_relu(z, 0.2), jnp.sin)


def soft_clip(z, limit: float = 4.0):
  """Identity inside [-limit, limit], logarithmic beyond (TabPFN's outlier handling)."""
  a = jnp.abs(z)
  return jnp.where(a > limit, jnp.sign(z) * (limit + jnp.log1p(jnp.maximum(a - limit, 0.0))), z)


def _standardize(x, axis=0):
  m = jnp.mean(x, axis, keepdims=True)
  s = jnp.std(x, axis, keepdims=True)
  return (x - m) / jnp.maximum(s, 1e-6)


def _rank_classes(rng_key, t, num_classes, max_classes):
  """Cuts t [T] into num_classes classes at the values of random rows; random class ids."""
  k_rows, k_perm = jax.random.split(rng_key)
  n = t.shape[0]
  bounds = t[jax.random.randint(k_rows, (max_classes - 1,), 0, n)]
  active = jnp.arange(max_classes - 1) < num_classes - 1
  cls = jnp.sum(active[None, :] & (t[:, None] > bounds[None, :]), -1)
  # A random permutation of the first num_classes ids (others never occur).
  keys = jax.random.uniform(k_perm, (max_classes,))
  keys = jnp.where(jnp.arange(max_classes) < num_classes, keys, 2.0 + jnp.arange(max_classes))
  perm = jnp.argsort(keys)
  return perm[cls]


def _discretize(rng_key, col):
  """A feature turned categorical: 2..10 bins at random-row values, integer codes."""
  k_bins, k_rows = jax.random.split(rng_key)
  nbins = jax.random.randint(k_bins, (), 2, 11)
  bounds = col[jax.random.randint(k_rows, (9,), 0, col.shape[0])]
  active = jnp.arange(9) < nbins - 1
  return jnp.sum(active[None, :] & (col[:, None] > bounds[None, :]), -1).astype(jnp.float32)


def scm_classification_prior(max_features: int = 100, max_classes: int = 10, *,
                             width: int = 128, max_layers: int = 3, w_std: float = 1.0,
                             keep_prob: tuple[float, float] = (0.3, 1.0),
                             noise_std: tuple[float, float] = (0.003, 0.1),
                             scm_prob: float = 0.6, cat_prob: float = 0.15, max_causes: int = 8,
                             num_classes: int | None = None):
  """The TabPFN-style classification prior described in the module docstring.

  Args:
    max_features: padded feature width (the network's input width).
    max_classes: largest number of classes.
    width: nodes per SCM layer (must be > max_features).
    max_layers: deepest SCM.
    w_std: weight scale (times 1/sqrt(width)).
    keep_prob: range of the per-dataset probability that an edge exists.
    noise_std: range (log-uniform) of the per-dataset node noise.
    scm_prob: probability of SCM mode (else MLP mode).
    max_causes: most root causes in SCM mode.
    cat_prob: probability that a feature is made categorical.
    num_classes: fix the number of classes (default: random in 2..max_classes).
  """
  if width <= max_features:
    raise errors.ConfigError(f"scm prior width ({width}) must be > max_features "
                             f"({max_features}); raise width.")

  def one(rng_key, seq_len):
    ks = jax.random.split(rng_key, 16)
    logd = jax.random.uniform(ks[0], (), minval=0.0, maxval=math.log(max_features + 1))
    d = jnp.clip(jnp.floor(jnp.exp(logd)).astype(jnp.int32), 1, max_features)
    if num_classes is None:
      c = jnp.where(jax.random.bernoulli(ks[1], 0.5), 2,
                    jax.random.randint(ks[2], (), 3, max_classes + 1))
    else:
      c = jnp.asarray(num_classes, jnp.int32)
    num_layers = jax.random.randint(ks[3], (), 1, max_layers + 1)
    keep = jax.random.uniform(ks[4], (), minval=keep_prob[0], maxval=keep_prob[1])
    noise = jnp.exp(jax.random.uniform(ks[5], (), minval=math.log(noise_std[0]),
                                       maxval=math.log(noise_std[1])))
    act_id = jax.random.randint(ks[6], (), 0, len(_ACTS))

    use_scm = jax.random.bernoulli(ks[15], scm_prob)
    # Root causes: d of them in MLP mode (x are the inputs), a few (1..max_causes) in SCM
    # mode, so that the nodes share low-dimensional causes and features inform the target.
    r_scm = jax.random.randint(ks[13], (), 1, max_causes + 1)
    r = jnp.where(use_scm, r_scm, d)
    z0 = jax.random.normal(ks[7], (seq_len, width)) * (jnp.arange(width) < r)[None, :]
    # Weight scale: w_std / sqrt(fan-in) with fan-in r (first layer) or keep * width.
    fan_in = jnp.where(jnp.arange(max_layers) == 0, r.astype(jnp.float32), keep * width)
    w = jax.random.normal(ks[8], (max_layers, width, width)) * (
        w_std / jnp.sqrt(fan_in))[:, None, None]
    w = w * jax.random.bernoulli(ks[9], keep, w.shape)
    b = jax.random.normal(ks[10], (max_layers, width)) * 0.5
    eps = jax.random.normal(ks[11], (max_layers, seq_len, width)) * noise

    def layer(z, inp):
      wl, bl, el, on = inp
      h = jax.lax.switch(act_id, _ACTS, z @ wl + bl) + el
      h = _standardize(h)  # Keeps deep random nets from exploding or vanishing.
      return jnp.where(on, h, z), jnp.where(on, h, 0.0)

    on = jnp.arange(max_layers) < num_layers
    z_last, zs = jax.lax.scan(layer, z0, (w, b, eps, on))  # zs [L, T, width]
    nodes = jnp.transpose(zs, (1, 0, 2)).reshape(seq_len, max_layers * width)
    # Random distinct nodes among the active layers: features first, then the target.
    valid = jnp.repeat(on, width)
    pri = jnp.where(valid, jax.random.uniform(ks[12], (max_layers * width,)), 2.0)
    order = jnp.argsort(pri)
    scm_x = nodes[:, order[:max_features]]
    scm_t = nodes[:, order[max_features]]
    mlp_x = z0[:, :max_features]
    mlp_t = z_last[:, jax.random.randint(ks[14], (), 0, width)]
    x = jnp.where(use_scm, scm_x, mlp_x)
    t = jnp.where(use_scm, scm_t, mlp_t)

    kc = jax.random.split(jax.random.fold_in(rng_key, 1), 3)
    y = _rank_classes(kc[0], t, c, max_classes)
    cat = jax.random.bernoulli(kc[1], cat_prob, (max_features,))
    x_cat = jax.vmap(_discretize, in_axes=(0, 1), out_axes=1)(
        jax.random.split(kc[2], max_features), x)
    x = jnp.where(cat[None, :], x_cat, x)
    x = soft_clip(_standardize(x))
    used = jnp.arange(max_features) < d
    x = jnp.where(used[None, :], x, 0.0) * jnp.sqrt(max_features / d.astype(jnp.float32))
    return x, y.astype(jnp.float32)

  def sample_batch(rng_key, batch_size, seq_len, num_features):
    if num_features != max_features:
      raise errors.ConfigError(f"the scm prior pads to max_features={max_features}; set "
                               f"num_features={max_features} (got {num_features}).")
    return jax.vmap(lambda k: one(k, seq_len))(jax.random.split(rng_key, batch_size))

  return sample_batch
