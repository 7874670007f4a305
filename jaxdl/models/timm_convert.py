"""timm (PyTorch) state dicts -> Flax variables, by name.

jaxdl's image classifiers name their submodules after timm's attributes, with index paths
joined by "_" (DEVELOPING.md), so a timm key maps mechanically onto a Flax path:

  features.denseblock1.denselayer3.conv1.weight  ->  params/denseblock1/denselayer3/conv1/kernel
  layer2.0.downsample.1.running_var              ->  batch_stats/layer2_0/downsample_1/var
  dense_stages.3.2.dense_block1.gamma            ->  params/dense_stages_3_2/dense_block1/gamma
  blocks.1.0.conv_pw.weight                      ->  params/blocks_1_0/conv_pw/kernel

(DenseNet drops timm's `features.` container.) Leaves: a `weight` becomes a conv `kernel`
(OIHW -> HWIO, depthwise [C, 1, kh, kw] -> [kh, kw, 1, C]), a dense `kernel` ([out, in] ->
[in, out]) or a norm `scale`; `running_mean`/`running_var` go to `batch_stats` as
`mean`/`var`; `num_batches_tracked` is dropped. The conversion is strict: every Flax leaf
must be filled exactly once and every timm key used, with the same shape after
transposition, else a one-line error names the first offending key.

No torch import here: state-dict values may be numpy arrays or torch tensors (converted with
`.numpy()`), e.g. from `safetensors.numpy.load_file` or `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import errors

# Per family: timm key prefixes that have no Flax counterpart (containers).
_DROP_PREFIXES = {"densenet": ("features.",)}
# Where the classifier weight lives, to infer num_classes when no `variables` are given.
_CLASSIFIER_KEYS = ("classifier.weight", "fc.weight", "head.fc.weight", "linear.weight")
_TEMPLATE_RES = 64  # input side used to build the abstract variables (shapes only)


def _to_numpy(v: Any) -> np.ndarray:
  if hasattr(v, "detach"):  # a torch tensor, without importing torch
    v = v.detach().cpu()
    if str(v.dtype) in ("torch.bfloat16", "torch.float16"):
      v = v.float()
    return v.numpy()
  return np.asarray(v)


def timm_key_to_path(key: str, family: str | None = None) -> tuple[tuple[str, ...], str]:
  """Splits a timm key into (Flax module path, torch leaf name), joining index paths.

  "layer1.0.downsample.0.weight" -> (("layer1_0", "downsample_0"), "weight").
  """
  for prefix in _DROP_PREFIXES.get(family or "", ()):
    if key.startswith(prefix):
      key = key[len(prefix):]
  *mods, leaf = key.split(".")
  path: list[str] = []
  for t in mods:
    if t.isdigit() and path:
      path[-1] = f"{path[-1]}_{t}"
    else:
      path.append(t)
  return tuple(path), leaf


def _convert_leaf(value: np.ndarray, target_leaf: str) -> np.ndarray:
  if target_leaf == "kernel":
    if value.ndim == 4:
      return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
      return value.T
  return value


def _abstract_variables(name: str, num_classes: int | None):
  from jaxdl.models.registry import create
  overrides = {} if num_classes is None else {"num_classes": num_classes}
  model = create(name, **overrides)
  x = jnp.zeros((1, _TEMPLATE_RES, _TEMPLATE_RES, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x))


def _unwrap(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
  for k in ("state_dict", "model"):
    if k in state_dict and isinstance(state_dict[k], Mapping):
      return state_dict[k]
  return state_dict


def load_timm_state_dict(name: str, state_dict: Mapping[str, Any], *,
                         variables: Mapping[str, Any] | None = None) -> dict:
  """Maps a timm state dict onto the Flax variables of jaxdl model `name`.

  Args:
    name: a registered jaxdl model name (`densenet121`, `rdnet_tiny`, `resnet50`, ...).
    state_dict: timm key -> numpy array or torch tensor (`model.state_dict()`, a
      safetensors file, or a `torch.load(path, weights_only=True)` dict).
    variables: optional Flax variables (or their `jax.eval_shape`) giving the target
      structure, e.g. for a model created with overrides. Without it the structure is that
      of `create(name, num_classes=<rows of the timm classifier>)`.

  Returns:
    {"params": ..., ["batch_stats": ...]} of float32 jnp arrays, ready for
    `model.apply(variables, x, train=False)`.

  Raises:
    ShapeError / ConfigError with a one-line message for a missing, unexpected or
    mis-shaped key.
  """
  from jaxdl.models.registry import family_of
  family = family_of(name)
  sd = {k: v for k, v in _unwrap(state_dict).items()
        if not k.endswith("num_batches_tracked")}
  sd = {k.replace("stem.stem.", "stem."): v for k, v in sd.items()}  # naver-ai checkpoints
  if variables is None:
    num_classes = next((int(_to_numpy(sd[k]).shape[0]) for k in _CLASSIFIER_KEYS if k in sd),
                       None)
    variables = _abstract_variables(name, num_classes)
  targets: dict[tuple[str, ...], Any] = {}
  for coll in ("params", "batch_stats"):
    if coll in variables:
      for path, leaf in jax.tree_util.tree_flatten_with_path(variables[coll])[0]:
        targets[(coll,) + tuple(p.key for p in path)] = leaf
  modules = {k[1:-1]: set() for k in targets}
  for k in targets:
    modules[k[1:-1]].add(k[-1])

  out: dict[tuple[str, ...], np.ndarray] = {}
  for key, value in sd.items():
    mod, leaf = timm_key_to_path(key, family)
    if mod not in modules:
      raise errors.ConfigError(
          f"timm key {key!r} has no counterpart {'/'.join(mod)!r} in jaxdl model {name!r}; "
          "is the state dict from the same architecture?")
    have = modules[mod]
    if leaf == "weight":
      dest = ("params",) + mod + ("kernel" if "kernel" in have else "scale",)
    elif leaf in ("running_mean", "running_var"):
      dest = ("batch_stats",) + mod + (leaf[len("running_"):],)
    else:
      dest = ("params",) + mod + (leaf,)
    if dest not in targets:
      raise errors.ConfigError(f"timm key {key!r} maps to {'/'.join(dest)!r}, which model "
                               f"{name!r} does not have.")
    arr = _convert_leaf(_to_numpy(value), dest[-1])
    want = tuple(targets[dest].shape)
    if tuple(arr.shape) != want:
      raise errors.ShapeError(
          f"timm key {key!r} has shape {tuple(_to_numpy(value).shape)} but {'/'.join(dest)!r}"
          f" needs {want} (after transposition); create the jaxdl model with the same options"
          " (num_classes, ...) as the timm model.")
    out[dest] = arr.astype(np.dtype(targets[dest].dtype))
  missing = [k for k in targets if k not in out]
  if missing:
    raise errors.ConfigError(
        f"state dict for {name!r} lacks {len(missing)} variable(s), e.g. "
        f"{'/'.join(missing[0])!r}; pass the full timm state dict of the same architecture.")

  result: dict = {}
  for dest, arr in out.items():
    node = result
    for p in dest[:-1]:
      node = node.setdefault(p, {})
    node[dest[-1]] = jnp.asarray(arr)
  return result


# ---- Deterministic random timm state dicts (golden tests without torch) ----------------

def random_timm_state_dict(spec: Iterable[tuple[str, Iterable[int]]], seed: int,
                           var_range: tuple[float, float] = (0.5, 1.5)
                           ) -> dict[str, np.ndarray]:
  """Seeded random values for a timm state dict given its (key, shape) list.

  Every value depends only on (seed, key, shape), so the same dict is drawn with or without
  torch. Convolution / linear weights are N(0, 2 / fan_in) (He); norm scales and layer-scale
  gammas U(0.5, 1.5); biases and running means N(0, 0.1^2); running variances
  U(*var_range), so that BatchNorm in eval mode is not the identity. Deep residual networks
  need larger running variances (e.g. (0.5, 4.0) for resnet50) to keep float32 logits O(1):
  otherwise each residual branch doubles the variance and the logits reach ~1e3, where
  float32 rounding alone exceeds an absolute tolerance of 1e-4.
  """
  out = {}
  for key, shape in spec:
    shape = tuple(int(s) for s in shape)
    if key.endswith("num_batches_tracked"):
      out[key] = np.zeros(shape, np.int64)
      continue
    h = int.from_bytes(key.encode(), "little") % (2 ** 61)
    rng = np.random.default_rng([seed, h])
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "weight" and len(shape) >= 2:
      fan_in = int(np.prod(shape[1:]))
      v = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    elif leaf == "running_var":
      v = rng.uniform(var_range[0], var_range[1], shape)
    elif leaf in ("weight", "gamma"):
      v = rng.uniform(0.5, 1.5, shape)
    else:
      v = 0.1 * rng.standard_normal(shape)
    out[key] = v.astype(np.float32)
  return out


def spec_to_json(spec: Iterable[tuple[str, Iterable[int]]]) -> str:
  return json.dumps([[k, [int(s) for s in shape]] for k, shape in spec])


def spec_from_json(text: str) -> list[tuple[str, tuple[int, ...]]]:
  return [(k, tuple(shape)) for k, shape in json.loads(text)]


def golden_input(seed: int, batch: int, resolution: int) -> np.ndarray:
  """The seeded NHWC input [batch, resolution, resolution, 3] of the golden-logit files."""
  return np.random.default_rng(seed).standard_normal(
      (batch, resolution, resolution, 3), dtype=np.float32)
