"""Synthetic PFN training data: datasets drawn from a prior, registered as "pfn_prior".

Müller et al. (ICLR 2022) train a PFN by drawing a fresh batch of datasets from the prior at
every step (their algorithm 1). `jaxdl.data.load("pfn_prior", "train", prior={...}, ...)`
returns a synthetic source whose `get_batch(step, batch_size)` is deterministic in (seed,
step): `{"inputs": {"x": [B, T, F], "y": [B, T], "num_context": [B]}, "targets": [B, T],
"borders": [B, K + 1]}` (regression; classification has integer targets and no borders),
where each dataset's number of context rows is drawn uniformly from [min_context,
max_context] and the remaining rows are the queries. The losses are in jaxdl/train/pfn.py.

Because every batch is a fresh draw from the prior, the training loss is an unbiased
estimate of the held-out loss: PFN configs need no evaluation split.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from jaxdl import errors
from jaxdl.data.registry import DatasetInfo, register
from jaxdl.inference import gp
from jaxdl.inference import pfn

_GP_KERNELS = {"rbf": gp.rbf, "matern12": gp.matern12, "matern32": gp.matern32,
               "matern52": gp.matern52}
PRIOR_KINDS = ("gp", "gp_hyper", "bnn", "bnn_classification", "scm", "mixture")


def _get(cfg: Mapping, key, default):
  return cfg[key] if key in cfg else default


def make_prior(cfg: Mapping) -> pfn.SampleBatchFn:
  """A prior `sample_batch` function from a config mapping with a `kind` key.

  kinds: "gp" (kernel, lengthscale, variance, noise_variance, x_min, x_max), "gp_hyper"
  (ranges lengthscale, variance, noise_variance, kernel), "bnn" (hidden, activation,
  weight_std, bias_std, noise_std), "bnn_classification" (hidden, activation, num_classes,
  weight_std, bias_std), "scm" (TabPFN-style classification, see pfn_tabular.py) and
  "mixture" (components: a list of such mappings, weights).
  """
  kind = _get(cfg, "kind", "gp")
  if kind == "gp":
    name = _get(cfg, "kernel", "rbf")
    if name not in _GP_KERNELS:
      raise errors.unknown_name("GP prior kernel", name, _GP_KERNELS)
    kernel = _GP_KERNELS[name](lengthscale=_get(cfg, "lengthscale", 0.6),
                               variance=_get(cfg, "variance", 1.0))
    return pfn.gp_prior(kernel, _get(cfg, "noise_variance", 0.01),
                        x_min=_get(cfg, "x_min", 0.0), x_max=_get(cfg, "x_max", 1.0))
  if kind == "gp_hyper":
    hyper = pfn.gp_hyperprior(tuple(_get(cfg, "lengthscale", (0.1, 1.0))),
                              tuple(_get(cfg, "variance", (0.5, 2.0))),
                              tuple(_get(cfg, "noise_variance", (1e-4, 0.1))),
                              kind=_get(cfg, "kernel", "rbf"))
    return pfn.gp_prior(None, 0.0, x_min=_get(cfg, "x_min", 0.0),
                        x_max=_get(cfg, "x_max", 1.0), hyperprior=hyper)
  if kind == "bnn":
    return pfn.bnn_prior(tuple(_get(cfg, "hidden", (32, 32))), _get(cfg, "activation", "tanh"),
                         weight_std=_get(cfg, "weight_std", 1.0),
                         bias_std=_get(cfg, "bias_std", 1.0),
                         noise_std=_get(cfg, "noise_std", 0.1))
  if kind == "bnn_classification":
    return pfn.bnn_classification_prior(
        tuple(_get(cfg, "hidden", (16, 16))), _get(cfg, "activation", "tanh"),
        num_classes=_get(cfg, "num_classes", 2), weight_std=_get(cfg, "weight_std", 1.0),
        bias_std=_get(cfg, "bias_std", 1.0), logit_scale=_get(cfg, "logit_scale", 1.0))
  if kind == "scm":
    from jaxdl.inference import pfn_tabular
    return pfn_tabular.scm_classification_prior(
        **{k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(cfg).items()
           if k != "kind"})
  if kind == "mixture":
    comps = [make_prior(c) for c in cfg["components"]]
    return pfn.mixture_prior(comps, _get(cfg, "weights", None))
  raise errors.unknown_name("PFN prior kind", kind, PRIOR_KINDS)


def prior_task(cfg: Mapping) -> str:
  kind = _get(cfg, "kind", "gp")
  if kind == "mixture":
    return prior_task(cfg["components"][0])
  return "classification" if kind in ("bnn_classification", "scm") else "regression"


class PriorDataset:
  """Synthetic datasets from a prior, one global batch per training step.

  `get_batch(step, batch_size)` is a pure function of (seed, step) (DEVELOPING.md,
  synthetic data). For regression the batch carries the Riemann bucket `borders`, computed
  once from `border_samples` prior draws with a seed of their own.
  """

  def __init__(self, sample_batch: pfn.SampleBatchFn, *, task: str, seed: int = 0,
               seq_len: int = 64, num_features: int = 1, min_context: int = 0,
               max_context: int = 50, num_buckets: int = 1000,
               border_samples: int = 200_000, prng: str = "threefry2x32"):
    if not 0 <= min_context <= max_context < seq_len:
      raise errors.ConfigError(
          f"need 0 <= min_context ({min_context}) <= max_context ({max_context}) < seq_len "
          f"({seq_len}) so that every dataset has a query row; adjust them.")
    self.task = task
    self.seed = int(seed)
    # "rbg" (XLA's RngBitGenerator) compiles and runs much faster on CPU than threefry for
    # priors that draw many random tensors (the SCM prior).
    self.prng = prng
    self.seq_len, self.num_features = int(seq_len), int(num_features)
    self.min_context, self.max_context = int(min_context), int(max_context)

    def draw(key, batch_size):
      k_data, k_ctx = jax.random.split(key)
      x, y = sample_batch(k_data, batch_size, self.seq_len, self.num_features)
      nc = jax.random.randint(k_ctx, (batch_size,), self.min_context, self.max_context + 1)
      return x, y, nc

    self._draw = jax.jit(draw, static_argnums=1)
    self.borders = None
    if task == "regression":
      n_sets = max(1, -(-int(border_samples) // self.seq_len))
      key = jax.random.fold_in(self._key(), 2**31 - 1)
      ys = []
      for i in range(0, n_sets, 256):
        _, y, _ = self._draw(jax.random.fold_in(key, i), min(256, n_sets - i))
        ys.append(np.asarray(y).reshape(-1))
      self.borders = pfn.borders_from_samples(np.concatenate(ys), num_buckets)

  def _key(self):
    return jax.random.key(self.seed, impl=self.prng)

  def get_batch(self, step: int, batch_size: int) -> dict[str, Any]:
    key = jax.random.fold_in(self._key(), int(step))
    x, y, nc = jax.device_get(self._draw(key, int(batch_size)))
    batch = {"inputs": {"x": np.asarray(x, np.float32), "y": np.asarray(y, np.float32),
                        "num_context": np.asarray(nc, np.int32)}}
    if self.task == "regression":
      batch["targets"] = np.asarray(y, np.float32)
      batch["borders"] = np.broadcast_to(self.borders, (batch_size, self.borders.size)).copy()
    else:
      batch["targets"] = np.asarray(y, np.int32)
    return batch


def _prior_cfg(kwargs) -> Mapping:
  cfg = kwargs.get("prior", None)
  return {"kind": "gp"} if cfg is None else cfg


def _info(**kwargs) -> DatasetInfo:
  cfg = _prior_cfg(kwargs)
  task = prior_task(cfg)
  seq_len = int(kwargs.get("seq_len", 64))
  num_features = int(kwargs.get("num_features", 1))
  num_classes = (int(kwargs.get("num_buckets", 1000)) if task == "regression"
                 else int(_get(cfg, "num_classes", _get(cfg, "max_classes", 10))))
  return DatasetInfo(name="pfn_prior", task=task, num_classes=num_classes,
                           input_shape=(seq_len, num_features), splits=("train",),
                           source="synthetic: drawn from a PFN prior (jaxdl.train.pfn)")


@register("pfn_prior", _info)
def load_prior(split, data_dir=None, **kwargs) -> PriorDataset:
  """The synthetic source of a PFN prior (see `PriorDataset`); `split` is always "train"."""
  del split, data_dir
  cfg = _prior_cfg(kwargs)
  known = {"prior", "seed", "seq_len", "num_features", "min_context", "max_context",
           "num_buckets", "border_samples", "prng"}
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise errors.ConfigError(f"pfn_prior has no option(s) {', '.join(unknown)}; its options "
                             f"are: {', '.join(sorted(known))}.")
  opts = {k: v for k, v in kwargs.items() if k in known - {"prior"}}
  return PriorDataset(make_prior(cfg), task=prior_task(cfg), **opts)


