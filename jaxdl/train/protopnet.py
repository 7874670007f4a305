"""Multi-phase training of part-prototype networks (`config.trainer = "protopnet"`).

The schedule of ProtoPNet (cfchen-duke/ProtoPNet `main.py`, `settings.py`), which
EvalProtoPNet (hqhQAQ/EvalProtoPNet `main.py`) and ST-ProtoPNet (cwangrun/ST-ProtoPNet) reuse:
  1. warm-up (`warm_epochs`): Adam on the add-on layers and prototypes (and the SA weights),
     backbone frozen;
  2. joint: Adam on backbone (lr 1e-4), add-on (3e-3) and prototypes (3e-3); PyTorch's StepLR
     is stepped at the start of every joint epoch, so joint epoch j (0-based) runs at
     lr * gamma^((j + 1) // step);
  3. push after the epochs listed in `push_epochs`: each prototype becomes its nearest
     training patch of its class (`jaxdl.analysis.prototypes.push_prototypes`);
  4. last layer after each push: `last_layer_epochs` epochs of Adam (1e-4) on the last layer
     only, with cross-entropy + L1 on the wrong-class weights (convex in the last layer).
     The backbone is frozen then, so the prototype similarities of the training set are
     computed once (eval-mode BatchNorm; PyTorch keeps the network in train mode there).
Losses: cross-entropy, cluster (0.8), separation (-0.08), L1 (1e-4), orthogonality and SDFA
(EvalProtoPNet), closeness/discrimination on alternating trivial/support batches
(ST-ProtoPNet). Weight decay 1e-3 (coupled, as torch.optim.Adam) on backbone and add-on
layers. EvalProtoPNet re-normalizes the prototypes after every step.

  python -m jaxdl.train --config configs/cub_protopnet_resnet34.py --workdir DIR

The run resumes from DIR at epoch granularity (a checkpoint after every epoch).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdl import data as jdata
from jaxdl import compiler, errors, models
from jaxdl.analysis import prototypes as proto_analysis
from jaxdl.layers.prototype import class_identity, l2_normalize, log_similarity
from jaxdl.models import protopnet as pp
from jaxdl.train.checkpoint import Checkpointer
from jaxdl.train.loop import make_preprocess
from jaxdl.train.metrics import MetricWriter
from jaxdl.train.trainers import register_trainer

log = logging.getLogger("jaxdl")

GROUPS = ("features", "add_on", "prototypes", "last_layer", "activation_weight")
PHASE_GROUPS = {
    "warm": ("add_on", "prototypes", "activation_weight"),
    "joint": ("features", "add_on", "prototypes", "activation_weight"),
    "last": ("last_layer",),
}


def param_group(name: str) -> str:
  """The optimizer group of a top-level parameter collection entry."""
  for prefix, group in (("features", "features"), ("add_on_layers", "add_on"),
                        ("prototypes", "prototypes"), ("last_layer", "last_layer"),
                        ("activation_weight", "activation_weight")):
    if name.startswith(prefix):
      return group
  raise errors.ConfigError(f"parameter {name!r} belongs to no prototype-network group")


def _labels(params):
  return {k: jax.tree.map(lambda _: param_group(k), v) for k, v in params.items()}


def make_optimizer(phase: str, config):
  """optax transformation of one phase: Adam per group (coupled weight decay on backbone and
  add-on layers), the other groups frozen. The learning rates are applied in the step."""
  wd = float(config.weight_decay)
  transforms = {}
  for g in GROUPS:
    if g not in PHASE_GROUPS[phase]:
      transforms[g] = optax.set_to_zero()
    elif g in ("features", "add_on") and wd > 0:
      transforms[g] = optax.chain(optax.add_decayed_weights(wd), optax.scale_by_adam())
    else:
      transforms[g] = optax.scale_by_adam()
  return optax.multi_transform(transforms, _labels)


def _lr_tree(params, config, phase, factor):
  lrs = {g: float(config.lr[g]) for g in GROUPS}
  trainable = PHASE_GROUPS[phase]
  return {k: jax.tree.map(lambda _: (lrs[param_group(k)] * factor if param_group(k) in trainable
                                     else 0.0), v) for k, v in params.items()}


def joint_lr_factor(joint_epoch: int, config) -> float:
  """StepLR stepped before each joint epoch: gamma^((j + 1) // step)."""
  return float(config.joint_lr_gamma) ** ((joint_epoch + 1) // int(config.joint_lr_step))


# ------------------------------------------------------------------------------- losses


def prototype_losses(model, params, logits, aux, targets, config, branch_step: int = 0):
  """Total loss and metrics of one batch ([] scalars)."""
  c = config.coefs
  ident = class_identity(model.num_prototypes, model.num_classes)
  onehot = jax.nn.one_hot(targets, model.num_classes)
  metrics = {}
  if model.variant == "stprotopnet":
    branch = "trivial" if branch_step % 2 == 0 else "support"
    b = aux[branch]
    ce = optax.softmax_cross_entropy(b["logits"], onehot).mean()
    clst, sep = pp.max_similarity_terms(b["similarities"], targets, ident)
    protos = l2_normalize(params[f"prototypes_{branch}"]["prototype_vectors"])
    orth = pp.orthogonality(protos, model.num_classes)
    l1 = pp.l1_wrong_class(params[f"last_layer_{branch}"]["kernel"], ident)
    if branch == "trivial":
      extra = float(c.discr) * pp.discrimination(protos, model.num_classes)
      loss = ce + c.clst_trv * clst.mean() + c.sep_trv * sep.mean()
    else:
      extra = float(c.close) * pp.closeness(protos, model.num_classes)
      loss = ce + c.clst_spt * clst.mean() + c.sep_spt * sep.mean()
    loss = loss + c.orth * orth + extra + c.l1 * l1
    metrics.update(cross_entropy=ce, cluster=clst.mean(), separation=sep.mean(), orth=orth)
    return loss, metrics
  ce = optax.softmax_cross_entropy(logits, onehot).mean()
  max_dist = float(model.prototype_dim)  # prototype_shape[1] * 1 * 1, as the reference
  clst, sep = pp.cluster_separation(aux["min_distances"], targets, ident, max_dist)
  loss = c.crs_ent * ce + c.clst * clst.mean() + c.sep * sep.mean()
  metrics.update(cross_entropy=ce, cluster=clst.mean(), separation=sep.mean())
  if "last_layer" in params and c.get("l1", 0.0):
    l1 = pp.l1_wrong_class(params["last_layer"]["kernel"], ident)
    loss = loss + c.l1 * l1
    metrics["l1"] = l1
  if c.get("orth", 0.0):
    orth = pp.orthogonality(params["prototypes"]["prototype_vectors"], model.num_classes)
    loss = loss + c.orth * orth
    metrics["orth"] = orth
  if c.get("consis", 0.0) and "shallow" in aux:
    consis = pp.sdfa_loss(aux["argmax"], aux["shallow"], aux["deep"], targets,
                          model.prototypes_per_class, float(config.sdfa_threshold))
    metrics["sdfa"] = consis
    loss = loss + aux["consis_on"] * c.consis * consis
  return loss, metrics


# ------------------------------------------------------------------------------- steps


def make_train_step(model, tx, preprocess, config, phase, branch_step=0):
  renorm = bool(config.get("normalize_prototypes", False))

  def step(params, model_state, opt_state, inputs, targets, lr_factor, consis_on):
    def loss_fn(p):
      if model_state:
        (logits, aux), new_state = model.apply(
            {"params": p, **model_state}, preprocess(inputs), train=True, with_aux=True,
            mutable=list(model_state.keys()))
      else:
        (logits, aux), new_state = model.apply({"params": p}, preprocess(inputs), train=True,
                                               with_aux=True), {}
      aux = dict(aux, consis_on=consis_on)
      loss, metrics = prototype_losses(model, p, logits, aux, targets, config, branch_step)
      metrics["accuracy"] = jnp.mean(jnp.argmax(logits, -1) == targets)
      return loss, (metrics, new_state)

    (loss, (metrics, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    lrs = _lr_tree(params, config, phase, lr_factor)
    params = jax.tree.map(lambda p, u, lr: p - lr * u, params, updates, lrs)
    if renorm:
      params = {k: ({"prototype_vectors": l2_normalize(v["prototype_vectors"])}
                    if k.startswith("prototypes") else v) for k, v in params.items()}
    metrics["loss"] = loss
    return params, dict(new_state), opt_state, metrics

  return compiler.jit(step, donate_argnums=(0, 2))


def evaluate(model, variables, preprocess, inputs, targets, batch_size):
  fn = proto_analysis.jitted_apply(model, None, preprocess)
  correct = 0
  for i in range(0, len(inputs), batch_size):
    logits = fn(variables, jnp.asarray(inputs[i:i + batch_size]))
    correct += int(np.sum(np.asarray(jnp.argmax(logits, -1)) == targets[i:i + batch_size]))
  return correct / len(inputs)


def prototype_activations(model, variables, preprocess, inputs, batch_size, branch=""):
  """[N, P] what a last layer sees (log-similarities or max projections), eval mode."""
  fwd = proto_analysis.jitted_apply(model, "push_forward", preprocess, branch=branch)

  def fn(x):
    dist = np.asarray(fwd(variables, jnp.asarray(x))[1])
    if model.variant == "protopnet":
      return np.asarray(log_similarity(dist, model.epsilon))
    return -dist  # -(min of -projection) = max projection
  return np.concatenate([fn(inputs[i:i + batch_size])
                         for i in range(0, len(inputs), batch_size)])


def last_layer_names(model) -> dict[str, str]:
  """{last-layer parameter name: branch of its prototype activations}."""
  if model.variant == "stprotopnet":
    return {"last_layer_trivial": "trivial", "last_layer_support": "support"}
  return {"last_layer": ""}


def train_last_layer(model, params, acts, targets, config, rng, opt_state=None):
  """Adam on the last layer(s) over cached activations {name: [N, P]}: the sum over branches
  of cross-entropy + l1 * wrong-class L1 (convex in the weights)."""
  ident = class_identity(model.num_prototypes, model.num_classes)
  tx = optax.adam(float(config.lr.last_layer))
  w = {k: params[k]["kernel"] for k in acts}
  opt_state = tx.init(w) if opt_state is None else opt_state
  l1_coef = float(config.coefs.l1)

  @jax.jit
  def step(w, opt_state, a, y):
    def loss_fn(w):
      total = 0.0
      for k in w:
        logits = a[k] @ w[k]
        total += optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        total += l1_coef * pp.l1_wrong_class(w[k], ident)
      return total
    loss, g = jax.value_and_grad(loss_fn)(w)
    u, opt_state = tx.update(g, opt_state, w)
    return optax.apply_updates(w, u), opt_state, loss

  bs = int(config.batch_size)
  n = len(targets)
  loss = jnp.nan
  for _ in range(int(config.last_layer_epochs)):
    perm = rng.permutation(n)
    for i in range(0, n - bs + 1, bs):
      idx = perm[i:i + bs]
      w, opt_state, loss = step(w, opt_state, {k: jnp.asarray(v[idx]) for k, v in acts.items()},
                                jnp.asarray(targets[idx]))
  params = dict(params)
  for k in w:
    params[k] = {"kernel": w[k]}
  return params, opt_state, float(loss)


# ------------------------------------------------------------------------------- trainer


def create_model(config, info):
  kw = {k: v for k, v in config.model.items() if k != "name"}
  kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items()}
  if "backbone_kwargs" in kw:
    kw["backbone_kwargs"] = {k: (tuple(v) if isinstance(v, list) else v)
                             for k, v in dict(kw["backbone_kwargs"]).items()}
  kw.setdefault("num_classes", info.num_classes)
  return models.create(config.model.name, **kw)


def _subset(train, config):
  """`num_train_examples` training examples: a seeded random subset in the loader's order
  (`train_subset="random"`, the default: loaders may sort by class, as CIFAR-10's does), or
  the first ones (`"first"`, for loaders that already shuffle, e.g. mnist_parts)."""
  n = int(config.get("num_train_examples", 0) or 0)
  if not n or n >= len(train["targets"]):
    return train
  if config.get("train_subset", "random") == "first":
    return {k: v[:n] for k, v in train.items()}
  idx = np.sort(np.random.default_rng(1234).permutation(len(train["targets"]))[:n])
  return {k: v[idx] for k, v in train.items()}


def _load(config, split):
  ds = config.dataset
  return jdata.load(ds.name, split, ds.get("data_dir") or None, **dict(ds.get("kwargs", {})))


@register_trainer("protopnet")
def train_protopnet(config, workdir) -> dict:
  """Trains a part-prototype network with the multi-phase schedule; returns final metrics."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  ds_kwargs = dict(config.dataset.get("kwargs", {}))
  info = jdata.get_info(config.dataset.name, **ds_kwargs)
  train = _load(config, config.dataset.get("train_split", "train"))
  test = _load(config, config.dataset.get("eval_split", "test"))
  train = _subset(train, config)
  model = create_model(config, info)
  preprocess = make_preprocess(info)
  augment = jdata.pipeline.get_augmentation(config.dataset.get("augment", None))
  rng = np.random.default_rng(int(config.seed))
  x0 = jnp.zeros((1, *train["inputs"].shape[1:]), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(int(config.seed)), x0)
  variables = flax.core.unfreeze(variables)
  params = variables.pop("params")
  # Only BatchNorm statistics are state; init also fills the sown "preactivations".
  model_state = {k: v for k, v in variables.items() if k == "batch_stats"}
  phases = ("warm", "joint", "last")
  txs = {ph: make_optimizer(ph, config) for ph in phases[:2]}
  opt_states = {ph: txs[ph].init(params) for ph in phases[:2]}
  last_opt_state = None
  bs = int(config.batch_size)
  steps_per_epoch = len(train["inputs"]) // bs
  if config.get("max_steps_per_epoch"):
    steps_per_epoch = min(steps_per_epoch, int(config.max_steps_per_epoch))
  writer = MetricWriter(workdir, tensorboard=False)
  ckpt = Checkpointer(workdir / "checkpoints", keep=2, async_save=False)
  start_epoch = 0
  state = {"params": params, "model_state": model_state, "opt": opt_states}
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
  step_done, restored = ckpt.restore_latest(abstract)
  if restored is not None:
    state, start_epoch = restored, int(step_done)
    log.info("resumed %s at epoch %d", workdir, start_epoch)
  params, model_state, opt_states = state["params"], state["model_state"], state["opt"]
  push_epochs = set(int(e) for e in config.get("push_epochs", ()))
  steps = {}
  eval_bs = int(config.get("eval_batch_size", 256))
  global_step = start_epoch * steps_per_epoch
  result: dict[str, Any] = {}
  t0 = time.time()
  for epoch in range(start_epoch, int(config.num_epochs)):
    phase = "warm" if epoch < int(config.warm_epochs) else "joint"
    factor = 1.0 if phase == "warm" else joint_lr_factor(epoch - int(config.warm_epochs), config)
    consis_on = 0.0 if phase == "warm" else 1.0  # EvalProtoPNet: SDFA after warm-up only
    perm = rng.permutation(len(train["inputs"]))
    sums: dict[str, float] = {}
    for s in range(steps_per_epoch):
      idx = np.sort(perm[s * bs:(s + 1) * bs])
      xb = train["inputs"][idx]
      if augment is not None:
        xb = augment.apply(xb, augment.draw(rng, len(idx), xb.shape[1:]))
      branch_step = global_step % 2 if model.variant == "stprotopnet" else 0
      key = (phase, branch_step)
      if key not in steps:
        steps[key] = make_train_step(model, txs[phase], preprocess, config, phase, branch_step)
      params, model_state, opt_states[phase], m = steps[key](
          params, model_state, opt_states[phase], jnp.asarray(xb),
          jnp.asarray(train["targets"][idx]), factor, consis_on)
      global_step += 1
      for k, v in m.items():
        sums[k] = sums.get(k, 0.0) + float(v)
      if global_step % int(config.get("log_every_steps", 50)) == 0:
        writer.write(global_step, {f"train/{k}": float(v) for k, v in m.items()})
        log.info("epoch %d step %d %s", epoch, global_step,
                 " ".join(f"{k}={float(v):.4f}" for k, v in m.items()))
    variables = {"params": params, **model_state}
    acc = evaluate(model, variables, preprocess, test["inputs"], test["targets"], eval_bs)
    record = {f"train/epoch_{k}": v / max(steps_per_epoch, 1) for k, v in sums.items()}
    record.update({"epoch": epoch, "phase": phase, "eval/accuracy": acc,
                   "time_s": time.time() - t0})
    result["accuracy"] = acc
    if epoch in push_epochs:
      for branch in ([b for b in model.branches] if model.variant == "stprotopnet" else [""]):
        variables, info_push = proto_analysis.push_prototypes(
            model, variables, train["inputs"], train["targets"], preprocess,
            batch_size=eval_bs, branch=branch or "support", with_boxes=False)
        np.savez(workdir / f"push{('_' + branch) if branch else ''}.npz", **info_push)
      params = variables["params"]
      record["eval/accuracy_push"] = evaluate(model, variables, preprocess, test["inputs"],
                                              test["targets"], eval_bs)
      if int(config.get("last_layer_epochs", 0)) > 0 and model.variant != "evalprotopnet":
        acts = {k: prototype_activations(model, variables, preprocess, train["inputs"],
                                         eval_bs, branch=b or "support")
                for k, b in last_layer_names(model).items()}
        params, last_opt_state, ll_loss = train_last_layer(
            model, params, acts, train["targets"], config, rng, last_opt_state)
        variables = {"params": params, **model_state}
        record["train/last_layer_loss"] = ll_loss
        record["eval/accuracy_last_layer"] = evaluate(model, variables, preprocess,
                                                      test["inputs"], test["targets"], eval_bs)
      result["accuracy"] = record.get("eval/accuracy_last_layer", record["eval/accuracy_push"])
    writer.write(global_step, record)
    log.info("epoch %d %s", epoch, json.dumps({k: v for k, v in record.items()}))
    ckpt.save(epoch + 1, {"params": params, "model_state": model_state, "opt": opt_states},
              force=True)
  ckpt.close()
  variables = {"params": params, **model_state}
  if "parts" in test and config.get("interpretability", None) is not None:
    n = int(config.interpretability.get("num_images", len(test["inputs"])))
    scores = proto_analysis.interpretability_scores(
        model, variables, test["inputs"][:n], test["targets"][:n], test["parts"][:n],
        preprocess, half_size=int(config.interpretability.half_size),
        threshold=float(config.interpretability.get("threshold", 0.8)), batch_size=eval_bs)
    result.update(scores)
  result["final_accuracy"] = evaluate(model, variables, preprocess, test["inputs"],
                                      test["targets"], eval_bs)
  writer.write(global_step, {f"final/{k}": v for k, v in result.items()})
  writer.close()
  (workdir / "final_params.msgpack").write_bytes(flax.serialization.to_bytes(variables))
  return result


@register_trainer("protopnet_eval")
def evaluate_protopnet(config, workdir) -> dict:
  """Evaluates the latest checkpoint of a `protopnet` run in `workdir` (e.g. one stopped
  before its last epoch): accuracy, and after a push + last-layer phase when the
  checkpoint has not been pushed yet (ProtoPNet, ST-ProtoPNet), accuracy again and the
  consistency and stability scores. Writes WORKDIR/final_eval.json.

    python -m jaxdl.train --config configs/X.py --workdir DIR --config.trainer=protopnet_eval
  """
  workdir = Path(workdir)
  ds_kwargs = dict(config.dataset.get("kwargs", {}))
  info = jdata.get_info(config.dataset.name, **ds_kwargs)
  train = _load(config, config.dataset.get("train_split", "train"))
  test = _load(config, config.dataset.get("eval_split", "test"))
  train = _subset(train, config)
  model = create_model(config, info)
  preprocess = make_preprocess(info)
  x0 = jnp.zeros((1, *train["inputs"].shape[1:]), jnp.float32)
  variables = flax.core.unfreeze(jax.jit(model.init)(jax.random.key(0), x0))
  params = variables.pop("params")
  state = {"params": params,
           "model_state": {k: v for k, v in variables.items() if k == "batch_stats"},
           "opt": {ph: make_optimizer(ph, config).init(params) for ph in ("warm", "joint")}}
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
  ckpt = Checkpointer(workdir / "checkpoints", keep=2, async_save=False)
  epochs_done, state = ckpt.restore_latest(abstract)
  ckpt.close()
  if state is None:
    raise errors.ConfigError(f"no checkpoint in {workdir}/checkpoints; train first with "
                             "config.trainer=protopnet")
  params, model_state = state["params"], state["model_state"]
  variables = {"params": params, **model_state}
  eval_bs = int(config.get("eval_batch_size", 256))
  result: dict[str, Any] = {"epochs_trained": int(epochs_done)}
  result["accuracy"] = evaluate(model, variables, preprocess, test["inputs"], test["targets"],
                                eval_bs)
  pushed = (int(epochs_done) - 1) in set(int(e) for e in config.get("push_epochs", ()))
  if model.variant != "evalprotopnet" and not pushed and config.get("push_epochs", ()):
    for branch in (model.branches if model.variant == "stprotopnet" else [""]):
      variables, _ = proto_analysis.push_prototypes(
          model, variables, train["inputs"], train["targets"], preprocess,
          batch_size=eval_bs, branch=branch or "support", with_boxes=False)
    params = variables["params"]
    result["accuracy_push"] = evaluate(model, variables, preprocess, test["inputs"],
                                       test["targets"], eval_bs)
    if int(config.get("last_layer_epochs", 0)) > 0:
      acts = {k: prototype_activations(model, variables, preprocess, train["inputs"], eval_bs,
                                       branch=b or "support")
              for k, b in last_layer_names(model).items()}
      params, _, _ = train_last_layer(model, params, acts, train["targets"], config,
                                      np.random.default_rng(int(config.seed)))
      variables = {"params": params, **model_state}
      result["accuracy_last_layer"] = evaluate(model, variables, preprocess, test["inputs"],
                                               test["targets"], eval_bs)
  if "parts" in test and config.get("interpretability", None) is not None:
    n = int(config.interpretability.get("num_images", len(test["inputs"])))
    result.update(proto_analysis.interpretability_scores(
        model, variables, test["inputs"][:n], test["targets"][:n], test["parts"][:n],
        preprocess, half_size=int(config.interpretability.half_size),
        threshold=float(config.interpretability.get("threshold", 0.8)), batch_size=eval_bs))
  (workdir / "final_eval.json").write_text(json.dumps(result, indent=2))
  log.info("evaluation of %s: %s", workdir, json.dumps(result))
  return result
