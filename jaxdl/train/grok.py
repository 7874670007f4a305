"""Training-time probes of the grokking experiments (Humayun et al., ICML 2024).

Registered for `config.probes` (run at every evaluation step, e.g. the log-spaced steps of
`eval_schedule="log"`, and written to metrics.jsonl):

  grok_accuracy     accuracy on the whole training split and on the test split
                    -> "grok/train_accuracy", "grok/test_accuracy"
  local_complexity  local complexity (jaxdl.analysis.local_complexity) at fixed training,
                    test, random and decision-boundary points, for each radius
                    -> "lc_r<radius>/<train|test|random|boundary>/<total|layer>"
  adversarial       PGD accuracy on a fixed set of test points
                    -> "adv/test_accuracy", "adv/test_clean_accuracy", and for each radius e
                    of `adv_extra_eps` "adv/test_accuracy_eps<e>" (step size scaled by
                    e / adv_eps), to see robustness move where the main eps gives 0

Options come from `config.probe_kwargs` (defaults below, the paper's MNIST settings). The
points and the frame of directions are drawn once, so every step measures the same thing.
Local complexity is measured in the model's input space (after `preprocess`), as the
reference does; attacks act on pixels scaled to [0, 1] (`adv_space="pixel"`: raw / 255,
clipped to [0, 1], so eps = 8/255 means 8 grey levels) or on the model input
(`adv_space="input"`, no clipping).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import compiler, errors
from jaxdl.analysis import adversarial
# `jaxdl.analysis.local_complexity` is the function; its module's other names come this way.
from jaxdl.analysis.local_complexity import (decision_boundary_points, local_complexity,
                                             random_directions)
from jaxdl.train import probes

DEFAULTS = {
    "accuracy_max_points": 0,     # 0: the whole split.
    "accuracy_batch_size": 1000,
    "lc_radii": (0.05, 0.5),      # The paper's MNIST runs: {0.05, 0.1, 0.5, 1, 5}.
    "lc_num_directions": 25,      # P = 25 directions -> 50 vertices (the reference's n = 50).
    "lc_include_center": False,
    "lc_num_points": 1000,        # Per set (train, test, random, boundary).
    "lc_sets": "train,test,random,boundary",
    "lc_per_layer": True,
    "lc_seed": 0,
    "adv_eps": 8 / 255,
  "adv_extra_eps": (),          # More radii, e.g. (1/255, 2/255): smaller attacks.
    "adv_step_size": 2 / 255,
    "adv_num_steps": 10,
    "adv_norm": "linf",
    "adv_num_points": 512,
    "adv_batch_size": 256,
    "adv_space": "pixel",         # "pixel" (raw / adv_pixel_max in [0, 1]) or "input".
    "adv_pixel_max": 255.0,
    "adv_random_start": True,
    "adv_seed": 0,
}


def _options(config) -> dict:
  given = dict(config.get("probe_kwargs", {}) or {})
  out = dict(DEFAULTS)
  out.update({k: v for k, v in given.items() if k in DEFAULTS})
  return out


def _radii(value) -> tuple[float, ...]:
  if isinstance(value, str):
    value = [v for v in value.split(",") if v.strip()]
  if isinstance(value, (int, float)):
    value = [value]
  radii = tuple(float(v) for v in value)
  if not radii or min(radii) <= 0:
    raise errors.ConfigError(f"probe_kwargs.lc_radii={value!r} must be positive radii, e.g. "
                             "(0.05, 0.5).")
  return radii


def _subset(split: dict, num: int, rng: np.random.Generator):
  n = len(split["targets"])
  idx = np.arange(n) if not num or num >= n else np.sort(rng.choice(n, num, replace=False))
  return {"inputs": np.asarray(split["inputs"])[idx], "targets": np.asarray(split["targets"])[idx]}


def _variables(variables):
  return {k: v for k, v in variables.items() if k != "preactivations"}


@probes.register("grok_accuracy")
def accuracy_probe(config, model, datasets, preprocess):
  opts = _options(config)
  rng = np.random.default_rng(0)
  sets = {name: _subset(split, int(opts["accuracy_max_points"]), rng)
          for name, split in datasets.items() if isinstance(split, dict)}
  logits = compiler.jit(lambda v, x: model.apply(v, preprocess(x)))

  def probe(variables, step):
    del step
    v = _variables(variables)
    return {f"grok/{name}_accuracy": adversarial.accuracy(
        logits, v, s["inputs"], s["targets"], batch_size=int(opts["accuracy_batch_size"]))
        for name, s in sets.items()}
  return probe


@probes.register("local_complexity")
def local_complexity_probe(config, model, datasets, preprocess):
  opts = _options(config)
  radii = _radii(opts["lc_radii"])
  wanted = [s.strip() for s in str(opts["lc_sets"]).split(",") if s.strip()]
  unknown = set(wanted) - {"train", "test", "random", "boundary"}
  if unknown:
    raise errors.ConfigError(f"probe_kwargs.lc_sets has unknown sets {sorted(unknown)}; use "
                             "train, test, random, boundary.")
  rng = np.random.default_rng(int(opts["lc_seed"]))
  num = int(opts["lc_num_points"])
  train = datasets["train"]
  test = datasets.get("test", train)
  points = {}
  if "train" in wanted:
    points["train"] = _subset(train, num, rng)["inputs"]
  if "test" in wanted or "boundary" in wanted:
    test_pts = _subset(test, num, rng)["inputs"]
    if "test" in wanted:
      points["test"] = test_pts
  raw = np.asarray(train["inputs"])
  lo, hi = float(raw.min()), float(raw.max())
  if "random" in wanted:
    # Uniform over the raw data range (the reference: [0, 1]^784 for MNIST in ToTensor units).
    points["random"] = rng.uniform(lo, hi, size=(num,) + raw.shape[1:]).astype(np.float32)
  prep = {k: preprocess(jnp.asarray(v)) for k, v in points.items()}
  if "boundary" in wanted:
    pre_test = preprocess(jnp.asarray(test_pts))
    partner = pre_test[rng.permutation(len(test_pts))]
  input_shape = tuple(next(iter(prep.values())).shape[1:]) if prep else \
      tuple(preprocess(jnp.asarray(raw[:1])).shape[1:])
  frame = random_directions(jax.random.key(int(opts["lc_seed"])),
                                   int(opts["lc_num_directions"]), input_shape)
  include_center = bool(opts["lc_include_center"])
  per_layer = bool(opts["lc_per_layer"])

  def probe(variables, step):
    del step
    v = _variables(variables)
    sets = dict(prep)
    valid = {}
    if "boundary" in wanted:
      pts, ok = decision_boundary_points(model.apply, v, pre_test, partner)
      ok = np.asarray(ok)
      if ok.any():
        sets["boundary"] = pts
        valid["boundary"] = ok
    out = {}
    for r in radii:
      for name, x in sets.items():
        lc = local_complexity(model.apply, v, x, radius=r, directions=frame,
                                     include_center=include_center)
        mask = valid.get(name)
        mean = lambda a: float(np.mean(np.asarray(a)[mask] if mask is not None else a))
        out[f"lc_r{r:g}/{name}/total"] = mean(lc["total"])
        if per_layer:
          out.update({f"lc_r{r:g}/{name}/{layer}": mean(a)
                      for layer, a in lc["per_layer"].items()})
      if "boundary" in valid:
        out["lc/boundary_fraction"] = float(np.mean(valid["boundary"]))
    return out
  return probe


@probes.register("adversarial")
def adversarial_probe(config, model, datasets, preprocess):
  opts = _options(config)
  if opts["adv_space"] not in ("pixel", "input"):
    raise errors.ConfigError(f"probe_kwargs.adv_space={opts['adv_space']!r} must be 'pixel' "
                             "or 'input'.")
  test = datasets.get("test", datasets["train"])
  s = _subset(test, int(opts["adv_num_points"]), np.random.default_rng(int(opts["adv_seed"])))
  scale = float(opts["adv_pixel_max"])
  if opts["adv_space"] == "pixel":
    x = s["inputs"].astype(np.float32) / scale
    clip = dict(clip_min=0.0, clip_max=1.0)

    def logits(v, xs):
      return model.apply(v, preprocess(xs * scale))
  else:
    x = np.asarray(preprocess(jnp.asarray(s["inputs"])))
    clip = {}

    def logits(v, xs):
      return model.apply(v, xs)
  y = s["targets"]
  key = jax.random.key(int(opts["adv_seed"]))
  attack = dict(eps=float(opts["adv_eps"]), step_size=float(opts["adv_step_size"]),
                num_steps=int(opts["adv_num_steps"]), norm=str(opts["adv_norm"]), **clip)
  extra = opts["adv_extra_eps"]
  extra = (extra,) if isinstance(extra, (int, float)) else tuple(extra or ())
  if any(float(e) <= 0 for e in extra):
    raise errors.ConfigError(f"probe_kwargs.adv_extra_eps={extra!r} must be positive radii, "
                             "e.g. (2/255,).")
  extra = tuple(float(e) for e in extra)

  def probe(variables, step):
    v = _variables(variables)
    rng_key = jax.random.fold_in(key, step) if opts["adv_random_start"] else None
    adv = adversarial.adversarial_accuracy(logits, v, x, y, batch_size=int(
        opts["adv_batch_size"]), rng_key=rng_key, **attack)
    clean = adversarial.accuracy(logits, v, x, y, batch_size=int(opts["adv_batch_size"]))
    out = {"adv/test_accuracy": adv, "adv/test_clean_accuracy": clean}
    for e in extra:
      out[f"adv/test_accuracy_eps{e:.4g}"] = adversarial.adversarial_accuracy(
          logits, v, x, y, batch_size=int(opts["adv_batch_size"]), rng_key=rng_key,
          **dict(attack, eps=e, step_size=attack["step_size"] * e / attack["eps"]))
    return out
  return probe
