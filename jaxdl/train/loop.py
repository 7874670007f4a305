"""The generic supervised training loop (trainer "supervised").

One readable loop in sections (big_vision style): devices and mesh, data, model, optimizer,
train state created already sharded, restore, jit-compiled steps with the state donated, then
the loop with logging, evaluation, probes and checkpoints.

Resumption is exact: batches are a pure function of (seed, step) (jaxdl.data.pipeline), the
step's randomness is fold_in(rng, step), and the optimizer state (including gradient-noise
keys) is checkpointed; a restarted run continues to the same parameters as an uninterrupted
one.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdl import compiler
from jaxdl import data as jdata
from jaxdl import errors
from jaxdl import models
from jaxdl.data.pipeline import TrainPipeline, eval_batches
from jaxdl.train import losses as losses_lib
from jaxdl.train import probes as probes_lib
from jaxdl.train import sharding as shard_lib
from jaxdl.train.checkpoint import Checkpointer
from jaxdl.train.metrics import MetricWriter
from jaxdl.train.mixing import mix
from jaxdl.train.optim import create_optimizer
from jaxdl.train.trainers import register_trainer

log = logging.getLogger("jaxdl")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class TrainState(NamedTuple):
  step: jax.Array          # int32 scalar: number of updates applied
  params: Any
  model_state: Any         # other variable collections (batch_stats), {} if none
  opt_state: Any
  rng: jax.Array           # uint32 [2] raw key; step randomness is fold_in(rng, step)


# ---------------------------------------------------------------------------------------------
# Config helpers.

def _model_overrides(config) -> dict:
  overrides = {k: v for k, v in config.model.items() if k != "name"}
  return {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()}


def create_model(config, info):
  """The configured model; num_classes and dtype come from the dataset and config."""
  name = config.model.name
  overrides = _model_overrides(config)
  fields = models.registry._module_fields(models.registry._REGISTRY[name][0]) \
      if name in models.list_models() else set()
  if "num_classes" in fields and "num_classes" not in overrides and info.num_classes > 0:
    overrides["num_classes"] = info.num_classes
  dtype = config.get("dtype", "float32")
  if dtype not in DTYPES:
    raise errors.ConfigError(f"config.dtype={dtype!r} is unknown; use one of "
                             f"{', '.join(DTYPES)}.")
  if "dtype" in fields and dtype != "float32":
    overrides["dtype"] = DTYPES[dtype]
  return models.create(name, **overrides)


def make_preprocess(info, dtype=jnp.float32):
  """Raw inputs -> model inputs on the device: (x - mean) / std, cast to `dtype`."""
  mean = None if info.mean is None else np.asarray(info.mean, np.float32)
  std = None if info.std is None else np.asarray(info.std, np.float32)

  def preprocess(x):
    if isinstance(x, dict):  # Structured inputs (e.g. PFN contexts) pass through.
      return x
    x = x.astype(jnp.float32)
    if mean is not None:
      x = (x - mean) / std
    return x.astype(dtype)
  return preprocess


def eval_steps_schedule(config, num_steps: int) -> set[int]:
  """Steps (number of updates done) after which to evaluate; always includes the last."""
  steps = {num_steps}
  if config.eval_schedule == "log":
    pts = np.geomspace(1, max(num_steps, 1), max(int(config.num_eval_points), 2))
    steps |= {0} | {int(round(p)) for p in pts}
  elif config.eval_schedule == "linear":
    if config.eval_every_steps > 0:
      steps |= set(range(config.eval_every_steps, num_steps, config.eval_every_steps))
  else:
    raise errors.ConfigError(f"config.eval_schedule={config.eval_schedule!r} is unknown; use "
                             "'linear' or 'log'.")
  return {s for s in steps if 0 <= s <= num_steps}


def _positive_int(config, key):
  value = config
  for part in key.split("."):
    value = value[part]
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
    raise errors.ConfigError(f"config.{key}={value!r} must be a positive integer.")


def validate(config):
  """One-line errors for bad config values before any work is done."""
  for key in ("batch_size", "eval_batch_size", "log_every_steps", "checkpoint_every_steps",
              "keep_checkpoints", "steps_per_call"):
    _positive_int(config, key)
  if config.num_train_steps <= 0 and not config.num_epochs > 0:
    raise errors.ConfigError("set config.num_train_steps > 0 or config.num_epochs > 0.")
  if not 0 <= config.label_smoothing < 1:
    raise errors.ConfigError(f"config.label_smoothing={config.label_smoothing} must be in [0, 1).")
  for key in ("mixup_alpha", "cutmix_alpha"):
    if config[key] < 0:
      raise errors.ConfigError(f"config.{key}={config[key]} must be >= 0.")
  if config.eval_every_steps < 0:
    raise errors.ConfigError(f"config.eval_every_steps={config.eval_every_steps} must be >= 0.")


# ---------------------------------------------------------------------------------------------
# Steps.

def _apply(model, variables, inputs, *, train, rng=None, mutable=False):
  rngs = {"dropout": rng} if rng is not None else None
  return model.apply(variables, inputs, train=train, rngs=rngs, mutable=mutable)


def make_train_step(model, tx, schedule, loss_fn, preprocess, config, num_classes):
  smoothing = float(config.label_smoothing)
  mixing = config.mixup_alpha > 0 or config.cutmix_alpha > 0

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    mix_rng, drop_rng = jax.random.split(rng)
    inputs = preprocess(batch["inputs"])
    batch = dict(batch)
    if smoothing > 0 or mixing:
      targets = batch["targets"]
      soft = (jax.nn.one_hot(targets, num_classes) if targets.ndim == 1 else targets)
      soft = soft * (1 - smoothing) + smoothing / num_classes
      inputs, soft = mix(mix_rng, inputs, soft, mixup_alpha=config.mixup_alpha,
                         cutmix_alpha=config.cutmix_alpha)
      batch["targets"] = soft
    mutable = list(state.model_state.keys())

    def objective(params):
      variables = {"params": params, **state.model_state}
      out = _apply(model, variables, inputs, train=True, rng=drop_rng, mutable=mutable or False)
      outputs, new_model_state = out if mutable else (out, {})
      per_example, metrics = loss_fn(outputs, batch)
      return jnp.mean(per_example), (metrics, new_model_state)

    (loss, (metrics, new_model_state)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = {"loss": loss, "grad_norm": optax.tree.norm(grads),
           "learning_rate": schedule(state.step)}
    out.update({k: jnp.mean(v) for k, v in metrics.items()})
    new_state = state._replace(step=state.step + 1, params=params, opt_state=opt_state,
                               model_state={**state.model_state, **new_model_state})
    return new_state, out

  return train_step


def make_train_steps(train_step):
  """K train steps in one call: (state, batches stacked on a leading axis of length K) ->
  (state, metrics stacked on that axis). The steps are those of `train_step`, applied in
  order by `lax.scan`, so K of them give the state that K calls of `train_step` give.

  One compiled execution per K steps: on CPU, where XLA maps the step's temporaries afresh
  in every execution, this spares the kernel K - 1 rounds of page faults (BENCHMARKS.md,
  "Several steps per execution"); on any backend it spares K - 1 dispatches.
  """
  def train_steps(state: TrainState, batches):
    return jax.lax.scan(train_step, state, batches)
  return train_steps


def call_plan(start: int, end: int, steps_per_call: int, is_boundary):
  """(first step, number of steps) of each compiled call that runs steps start..end-1.

  A call takes `steps_per_call` steps unless that would pass a step count `done` (number of
  updates finished) with `is_boundary(done)`, where the loop must see the state (log,
  evaluation, checkpoint): the steps up to such a boundary that do not fill a call run one
  per call. So every boundary is the end of a call, and `steps_per_call=1` is step by step.
  """
  step = start
  while step < end:
    stop = min(step + steps_per_call, end)
    stop = next((d for d in range(step + 1, stop) if is_boundary(d)), stop)
    if stop - step == steps_per_call:
      yield step, steps_per_call
    else:
      yield from ((s, 1) for s in range(step, stop))
    step = stop


def stack_batches(batches: list):
  """Host batches of consecutive steps -> one batch with a leading steps axis."""
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def make_eval_step(model, loss_fn, preprocess):
  def eval_step(state: TrainState, batch):
    variables = {"params": state.params, **state.model_state}
    outputs = _apply(model, variables, preprocess(batch["inputs"]), train=False)
    per_example, metrics = loss_fn(outputs, batch)
    mask = batch["mask"]
    sums = {"loss": jnp.sum(per_example * mask)}
    sums.update({k: jnp.sum(v * mask) for k, v in metrics.items()})
    return sums, jnp.sum(mask)
  return eval_step


def _all_finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                            if jnp.issubdtype(x.dtype, jnp.inexact)]))


# ---------------------------------------------------------------------------------------------
# The loop.

def _save_config(config, workdir: Path):
  path = workdir / "config.json"
  new = json.loads(config.to_json_best_effort())
  if path.exists():
    old = json.loads(path.read_text())
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
      log.warning("resuming %s with a config that differs in: %s", workdir, ", ".join(changed))
  if jax.process_index() == 0:
    path.write_text(json.dumps(new, indent=2, sort_keys=True))


def _load_split(config, split):
  ds = config.dataset
  return jdata.load(ds.name, split, ds.data_dir or None, **dict(ds.get("kwargs", {})))


def _host_metrics(pending: list[dict]) -> dict:
  """The mean of each metric over the steps of `pending` (calls of one step, whose metrics
  are scalars, or of several, whose metrics have a leading steps axis)."""
  stacked = jax.device_get(pending)
  return {f"train/{k}": float(np.mean(np.concatenate([np.ravel(m[k]) for m in stacked])))
          for k in stacked[0]}


class Setup(NamedTuple):
  """Everything a supervised run is built from (shared by the loop and the benchmarks)."""
  mesh: Any
  info: Any
  train_source: Any
  eval_source: Any
  pipeline: TrainPipeline
  num_steps: int
  model: Any
  preprocess: Any
  loss_fn: Any
  tx: Any
  schedule: Any
  init: Any                # rng -> TrainState (not jitted)
  abstract_state: Any      # ShapeDtypeStructs with shardings
  shardings: Any
  train_step: Any          # jitted (state, global batch) -> (state, metrics), state donated
  eval_step: Any           # jitted (state, global batch) -> (sums, count)
  # jitted (state, config.steps_per_call global batches stacked on axis 0) -> (state,
  # metrics stacked on axis 0), state donated (make_train_steps); None when steps_per_call=1.
  train_steps: Any = None


def setup(config) -> Setup:
  """Builds mesh, data, model, optimizer, state shardings and compiled steps from `config`."""
  validate(config)

  # --- Devices and mesh.
  mesh = shard_lib.make_mesh(config.mesh.data, config.mesh.model)
  shard_lib.check_batch_size(config.batch_size, mesh)
  shard_lib.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  pidx, pcount = jax.process_index(), jax.process_count()

  # --- Data.
  info = jdata.get_info(config.dataset.name, **dict(config.dataset.get("kwargs", {})))
  train_source = _load_split(config, config.dataset.train_split)
  eval_source = _load_split(config, config.dataset.eval_split) if config.dataset.eval_split \
      else None
  augment = info.augment if config.dataset.augment == "default" else config.dataset.augment
  pipeline = TrainPipeline(train_source, global_batch_size=config.batch_size, seed=config.seed,
                           augment=augment, process_index=pidx, process_count=pcount)
  if config.num_train_steps > 0:
    num_steps = int(config.num_train_steps)
  elif pipeline.steps_per_epoch is None:
    raise errors.ConfigError(f"dataset {config.dataset.name!r} is infinite; set "
                             "config.num_train_steps instead of num_epochs.")
  else:
    num_steps = int(math.ceil(config.num_epochs * pipeline.steps_per_epoch))
  example = pipeline.batch(0)

  # --- Model, loss, optimizer.
  dtype = DTYPES.get(config.get("dtype", "float32"), jnp.float32)
  model = create_model(config, info)
  preprocess = make_preprocess(info, dtype)
  loss_fn = losses_lib.get(config.loss)
  tx, schedule = create_optimizer(config.optimizer, num_steps,
                                  steps_per_epoch=pipeline.steps_per_epoch, seed=config.seed)

  # --- Train state shapes and shardings.
  def _init_array(x):
    dtype = np.asarray(x).dtype
    dtype = np.float32 if dtype == np.float64 else dtype  # Tables come as float64.
    return jnp.zeros((1,) + np.shape(x)[1:], dtype)
  init_inputs = jax.tree.map(_init_array, example["inputs"])

  def init(rng):
    params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    variables = model.init({"params": params_rng, "dropout": dropout_rng},
                           preprocess(init_inputs), train=False)
    variables = dict(variables)
    params = variables.pop("params")
    variables.pop("preactivations", None)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                      opt_state=tx.init(params), rng=jax.random.key_data(state_rng))

  rng = jax.random.key(config.seed)
  try:
    abstract = jax.eval_shape(init, rng)
  except (TypeError, ValueError) as e:
    shape = tuple(np.shape(example["inputs"]))[1:] if not isinstance(example["inputs"], dict) \
        else "structured"
    msg = str(e).splitlines()[0][:300]
    raise errors.ShapeError(
        f"model {config.model.name!r} cannot take inputs of shape {shape} from dataset "
        f"{config.dataset.name!r} ({type(e).__name__}: {msg}); choose a model for this input "
        "size or another dataset.") from None
  shardings = shard_lib.state_shardings(abstract, mesh, config.param_sharding)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)

  # --- Compiled steps.
  replicated = shard_lib.replicated(mesh)
  batch_sharding = shard_lib.batch_sharding(mesh)
  num_classes = max(info.num_classes, 1)
  # jaxdl's XLA:CPU fusion choices (jaxdl.compiler); nothing on GPU / TPU.
  step_fn = make_train_step(model, tx, schedule, loss_fn, preprocess, config, num_classes)
  train_step = compiler.jit(step_fn, in_shardings=(shardings, batch_sharding),
                            out_shardings=(shardings, replicated), donate_argnums=0)
  train_steps = None
  if config.steps_per_call > 1:
    train_steps = compiler.jit(
        make_train_steps(step_fn),
        in_shardings=(shardings, shard_lib.batch_sharding(mesh, stacked=True)),
        out_shardings=(shardings, replicated), donate_argnums=0)
  eval_step = compiler.jit(make_eval_step(model, loss_fn, preprocess),
                           in_shardings=(shardings, batch_sharding), out_shardings=replicated)
  return Setup(mesh=mesh, info=info, train_source=train_source, eval_source=eval_source,
               pipeline=pipeline, num_steps=num_steps, model=model, preprocess=preprocess,
               loss_fn=loss_fn, tx=tx, schedule=schedule, init=init, abstract_state=abstract,
               shardings=shardings, train_step=train_step, eval_step=eval_step,
               train_steps=train_steps)


# Steps the host may dispatch ahead of the device. Unbounded, the host (a cheap input
# pipeline, asynchronous dispatch) races hundreds of steps ahead of a slow device: a stop
# request then waits for all of them (on 2 CPU cores, ~1.5 s per DenseNet-BC-100 step, a
# SIGTERM took minutes to honour) and every queued step holds its batch in device memory.
MAX_STEPS_IN_FLIGHT = 3


class InFlight:
  """Keeps the outputs of the last `limit` dispatched steps; adding one more waits for the
  oldest (returns at once if it has finished)."""

  def __init__(self, limit: int = MAX_STEPS_IN_FLIGHT, wait=jax.block_until_ready):
    self.limit, self.wait, self.queue = limit, wait, []

  def add(self, outputs) -> None:
    self.queue.append(outputs)
    if len(self.queue) > self.limit:
      self.wait(self.queue.pop(0))


class StopRequest:
  """Turns SIGINT/SIGTERM into a request to stop at the next step boundary.

  Interrupting a jitted step midway would leave the donated state half-consumed, so the
  handlers only set a flag; the loop checks it after each step, writes a checkpoint of the
  last finished step and raises `errors.TrainingInterrupted`. A second signal interrupts at
  once (the previous handlers are back). Handlers are installed only in the main thread
  (elsewhere `signal` cannot install them and the flag stays unset).
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.signum = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.signum = signum
    self._restore()  # A second signal acts immediately.

  def _restore(self):
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    self._restore()
    return False

  def requested(self, *, sync: bool = False) -> bool:
    """Whether any process was signalled; `sync` agrees across processes (a collective)."""
    flag = self.signum is not None
    if sync and jax.process_count() > 1:
      from jax.experimental import multihost_utils
      flag = bool(np.max(multihost_utils.process_allgather(np.int32(flag))))
    return flag


@register_trainer("supervised")
def train_and_evaluate(config, workdir) -> dict:
  """Trains `config.model` on `config.dataset`; returns the final metrics."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  built = setup(config)
  mesh, pipeline, num_steps = built.mesh, built.pipeline, built.num_steps
  train_source, eval_source = built.train_source, built.eval_source
  shardings, abstract = built.shardings, built.abstract_state
  train_step, eval_step = built.train_step, built.eval_step
  pidx, pcount = jax.process_index(), jax.process_count()
  rng = jax.random.key(config.seed)

  # --- Restore, or initialize.
  ckpt = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
  start_step, state = ckpt.restore_latest(abstract)
  if state is None:
    start_step = 0
    state = jax.jit(built.init, out_shardings=shardings)(rng)
  else:
    log.info("resuming from checkpoint step %d in %s", start_step, workdir)
  _save_config(config, workdir)
  writer = MetricWriter(workdir, resume_step=start_step)

  replicated = shard_lib.replicated(mesh)
  all_finite = jax.jit(_all_finite, out_shardings=replicated)

  def evaluate(state):
    if eval_source is None:
      return {}
    totals, count = None, 0.0
    for batch in eval_batches(eval_source, config.eval_batch_size, process_index=pidx,
                              process_count=pcount):
      sums, n = eval_step(state, shard_lib.global_batch(batch, mesh))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
      count += n
    totals, count = jax.device_get((totals, count))
    return {f"eval/{k}": float(v) / max(float(count), 1.0) for k, v in totals.items()}

  probe_names = probes_lib.parse(config.probes)
  probes = []
  if probe_names:
    datasets = {"train": train_source}
    if eval_source is not None:
      datasets["test"] = eval_source
    probes = [probes_lib.get(n)(config, built.model, datasets, built.preprocess)
              for n in probe_names]

  def run_eval(state, step):
    metrics = evaluate(state)
    if probes:
      variables = {"params": state.params, **state.model_state}
      for probe in probes:
        metrics.update(probe(variables, step))
    if metrics:
      writer.write(step, metrics)
    return metrics

  def check_finite(step, pending, state):
    bad = [m for m in jax.device_get(pending) if not np.all(np.isfinite(m["loss"]))]
    if bad or not bool(all_finite(state.params)):
      last = ckpt.latest_step()
      kept = (f"the last good checkpoint (step {last}) is kept in {ckpt.directory}"
              if last is not None else "no checkpoint had been written yet")
      raise errors.NonFiniteLossError(
          f"training diverged: the loss or the parameters became NaN/Inf by step {step}; {kept}."
          " Lower config.optimizer.learning_rate or set config.optimizer.grad_clip_norm.")

  # --- Loop.
  eval_at = eval_steps_schedule(config, num_steps)
  final_metrics: dict = {}
  if start_step == 0 and 0 in eval_at:
    final_metrics.update(run_eval(state, 0))
  from tqdm.auto import tqdm
  bar = tqdm(total=num_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
             disable=None if pidx == 0 else True)
  pending: list = []
  unchecked: list = []
  per_call = int(config.steps_per_call)
  # A call of K steps counts as K steps in flight (at least one call may be).
  in_flight = InFlight(limit=max(1, MAX_STEPS_IN_FLIGHT // per_call))
  multiprocess = pcount > 1

  def is_boundary(done):
    return (done % config.log_every_steps == 0 or done % config.checkpoint_every_steps == 0
            or done in eval_at)
  plan = call_plan(start_step, num_steps, per_call, is_boundary)
  warned_single = False
  # Throughput between log points (wall clock, host side; the first interval of a process
  # includes compilation and, when evaluating, the evaluation time).
  last_log_step, last_log_time = start_step, time.perf_counter()
  batches = pipeline.iterate(start_step, num_steps, prefetch=max(2, 2 * per_call))
  try:
    with StopRequest() as stop:
      for step, count in plan:
        host = [next(batches) for _ in range(count)]
        if count == 1:
          if per_call > 1 and not warned_single:
            warned_single = True
            log.info("steps_per_call=%d: step %d runs alone, as a log, eval or checkpoint "
                     "step comes before a call of %d steps from it would end (multiples of %d "
                     "avoid this); the one-step function is compiled too", per_call, step + 1,
                     per_call, per_call)
          state, metrics = train_step(state, shard_lib.global_batch(host[0], mesh))
        else:
          state, metrics = built.train_steps(
              state, shard_lib.global_batch(stack_batches(host), mesh, stacked=True))
        in_flight.add(metrics)
        pending.append(metrics)
        unchecked.append(metrics)
        done = step + count
        bar.update(count)
        if done % config.log_every_steps == 0 or done == num_steps:
          check_finite(done, unchecked, state)
          unchecked = []
          train_metrics = _host_metrics(pending)
          pending = []
          now = time.perf_counter()
          steps_per_sec = (done - last_log_step) / max(now - last_log_time, 1e-9)
          train_metrics["train/steps_per_sec"] = steps_per_sec
          train_metrics["train/examples_per_sec"] = steps_per_sec * pipeline.batch_size
          last_log_step, last_log_time = done, now
          writer.write(done, train_metrics)
          final_metrics.update(train_metrics)
          bar.set_postfix(loss=f"{train_metrics['train/loss']:.4f}")
        if done in eval_at:
          final_metrics.update(run_eval(state, done))
        if done % config.checkpoint_every_steps == 0 or done == num_steps:
          check_finite(done, unchecked, state)
          unchecked = []
          ckpt.save(done, state, force=True)
        # Across processes the flag is agreed at log steps only (a collective).
        at_sync_point = not multiprocess or done % config.log_every_steps == 0
        if at_sync_point and stop.requested(sync=multiprocess):
          check_finite(done, unchecked, state)
          if ckpt.latest_step() != done:
            ckpt.save(done, state, force=True)
          raise errors.TrainingInterrupted(
              f"interrupted at step {done}; its checkpoint is in {ckpt.directory}: restart with "
              "the same --workdir to resume.")
  finally:
    batches.close()
    bar.close()
    ckpt.close()
    writer.close()
  if start_step >= num_steps and not final_metrics:
    final_metrics = evaluate(state)
  final_metrics["step"] = num_steps
  return final_metrics
