"""PFN training on the generic loop: the Riemann and cross-entropy losses.

Müller et al. (ICLR 2022) minimise the NLL of held-out rows given the rest of a dataset drawn
from the prior (their eq. 2, algorithm 1). With the synthetic "pfn_prior" dataset
(jaxdl/data/pfn_prior.py) and the "pfn" models, the generic supervised loop
(jaxdl/train/loop.py) trains PFNs given these losses:

- "bar_nll": the Riemann-distribution NLL averaged over each dataset's query rows.
- "pfn_cross_entropy": the same for classification (integer targets).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from jaxdl.data.pfn_prior import PriorDataset, make_prior, prior_task  # noqa: F401
from jaxdl.inference import pfn
from jaxdl.models.pfn import context_mask
from jaxdl.train import losses


def _query_mean(values, batch):
  """Mean of values [B, T] over each dataset's query rows: [B]."""
  q = ~context_mask(batch["inputs"]["num_context"], values.shape[1])
  return jnp.sum(jnp.where(q, values, 0.0), -1) / jnp.maximum(jnp.sum(q, -1), 1)


@losses.register("bar_nll")
def bar_nll(outputs, batch):
  """Riemann-distribution NLL of the query rows (Müller et al. eq. 2), per dataset: [B].

  Also reports the squared error of the predictive mean.
  """
  bar = pfn.BarDistribution(batch["borders"][0])
  y = batch["targets"].astype(jnp.float32)
  nll = bar.nll(outputs, y)
  se = jnp.square(bar.mean(outputs) - y)
  return _query_mean(nll, batch), {"nll": _query_mean(nll, batch),
                                   "squared_error": _query_mean(se, batch)}


@losses.register("pfn_cross_entropy")
def pfn_cross_entropy(outputs, batch):
  """Cross-entropy of the query rows' labels, per dataset: [B]; also reports accuracy."""
  logits = outputs.astype(jnp.float32)
  labels = batch["targets"].astype(jnp.int32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  acc = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return _query_mean(ce, batch), {"accuracy": _query_mean(acc, batch)}
