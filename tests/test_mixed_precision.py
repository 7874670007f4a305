"""Mixed precision for every model family: `dtype=bfloat16` computes in bf16 and keeps
float32 parameters and float32 BatchNorm statistics (no loss scaling is needed for bf16:
its exponent range is float32's).

Per family a small variant is built twice from the same float32 variables, once with
`dtype=None` (float32) and once with `dtype=bfloat16`, and run in training mode (BatchNorm on
batch statistics, running averages updated). Checked:
- parameters and updated `batch_stats` are float32 (mixed precision, not half precision);
- every Conv / Dense output is bfloat16 (the compute really is bf16; without this the
  closeness check below would pass trivially);
- the logits are float32 and close to the float32 model's.

Tolerance. bf16 keeps 8 significant bits: rounding to it has relative error at most
u = 2^-8 = 3.9e-3 (rms u / sqrt(3) for uniformly distributed rounding errors). A network
rounds its input, its weights and every layer output to bf16, so each of its L weight layers
adds about two independent roundings of relative size u / sqrt(3); with normalized layers
(gain ~1) they add in quadrature to a relative rms error of about u * sqrt(2 L / 3) in the
logits. The test allows 4x that (statistical slack for small layers, the few extra
roundings of residual adds, pooling and softmax): ||bf16 - f32|| / ||f32|| <= 4 u sqrt(2L/3),
with L the number of Conv/Dense layers actually run (counted from the captured outputs).
A broken mixed-precision path (a bf16 statistic, say) is off by far more: a batch variance
computed in bf16 loses the digits that survive the mean subtraction.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import models

U_BF16 = 2.0 ** -8

# family -> (registered name, overrides for a small variant, input shape)
CASES = {
    "mlp": ("mlp", dict(features=(32, 32), num_classes=5), (4, 12)),
    "cnn": ("cnn", dict(features=(8, 16), dense=(16,), use_bn=True, num_classes=5),
            (4, 8, 8, 3)),
    "densenet": ("densenet_bc_100_k12", dict(growth_rate=4, block_config=(1,),
                                             num_classes=5), (4, 8, 8, 3)),
    "rdnet": ("rdnet_tiny", dict(num_init_features=16, growth_rates=(8, 16),
                                 num_blocks_list=(1, 1), is_downsample_block=(False, True),
                                 block_types=("Block", "BlockESE"), num_classes=5),
              (4, 16, 16, 3)),
    "resnet": ("resnet18", dict(stage_sizes=(1, 1), base_width=8, num_classes=5),
               (4, 16, 16, 3)),
    "vgg": ("vgg11_bn", dict(cfg=(8, "M", 16, "M"), num_classes=5), (4, 8, 8, 3)),
    "mobilenet": ("mcunet_in0", dict(kernel_sizes=(3, 5), expand_ratios=(1, 4),
                                     channels=(8, 16), strides=(1, 2), stem_size=8,
                                     num_classes=5), (4, 16, 16, 3)),
    "protopnet": ("protopnet", dict(num_classes=3, backbone="cnn", prototypes_per_class=2,
                                    prototype_dim=4, impl="xla",
                                    backbone_kwargs={"features": (4, 8), "use_bn": True}),
                  (4, 8, 8, 3)),
    "pfn": ("pfn_small", dict(num_classes=16, num_layers=1, emsize=32, hidden=64,
                              decoder_hidden=32), None),
}


def _inputs(shape):
  if shape is None:  # PFN: a dataset of 6 context rows and 4 queries.
    x = jax.random.normal(jax.random.key(1), (2, 10, 3))
    y = jax.random.normal(jax.random.key(2), (2, 10))
    return {"x": x, "y": y, "num_context": jnp.array([6, 6])}
  return jax.random.normal(jax.random.key(1), shape)


def _weight_layer(module, method_name):
  return method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense, nn.DenseGeneral))


def _leaf_dtypes(tree):
  return {jnp.dtype(a.dtype) for a in jax.tree_util.tree_leaves(tree)}


def _family_models():
  registered = {models.family_of(n) for n in models.list_models()}
  return registered


def test_every_family_is_covered():
  assert _family_models() <= set(CASES), sorted(_family_models() - set(CASES))


# Default suite: DenseNet (its functional BatchNorm in the bottleneck) and the PFN (LayerNorm,
# attention); the other families compile a model each (~10 CPU-s apiece), so they run with
# `-m slow` (all nine passed when this file was written, see BENCHMARKS.md).
DEFAULT_FAMILIES = ("densenet", "pfn")


@pytest.mark.parametrize("family", [
    f if f in DEFAULT_FAMILIES else pytest.param(f, marks=pytest.mark.slow)
    for f in sorted(CASES)])
def test_bf16_compute_f32_params_and_statistics(family):
  name, kw, shape = CASES[family]
  x = _inputs(shape)
  m32 = models.create(name, **kw)
  m16 = models.create(name, dtype=jnp.bfloat16, **kw)
  # Initializing the bf16 model gives float32 parameters too (shapes only: no compile).
  shapes16 = jax.eval_shape(m16.init, jax.random.key(0), x)
  assert _leaf_dtypes(shapes16["params"]) == {jnp.dtype(jnp.float32)}
  assert _leaf_dtypes(shapes16.get("batch_stats", {})) <= {jnp.dtype(jnp.float32)}
  has_bn = "batch_stats" in shapes16
  mutable = ["batch_stats", "intermediates"] if has_bn else ["intermediates"]

  @jax.jit
  def run(key, x):  # one compilation per family: init, f32 and bf16 forward passes
    variables = m32.init(key, x)
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    l32, _ = m32.apply(variables, x, train=True, mutable=["batch_stats"])
    l16, state = m16.apply(variables, x, train=True, mutable=mutable,
                           capture_intermediates=_weight_layer)
    return variables, l32, l16, state

  variables, l32, l16, state = run(jax.random.key(0), x)
  assert l16.dtype == jnp.float32 and l32.dtype == jnp.float32
  if has_bn:
    stats = state["batch_stats"]
    assert _leaf_dtypes(stats) == {jnp.dtype(jnp.float32)}
    # The statistics were updated in training mode (not just carried through).
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), stats,
                                     variables["batch_stats"])
    assert any(jax.tree_util.tree_leaves(changed))
  outs = jax.tree_util.tree_leaves(state["intermediates"])
  assert outs, "no Conv/Dense layer captured"
  assert _leaf_dtypes(outs) == {jnp.dtype(jnp.bfloat16)}, family
  num_layers = len(outs)
  l32, l16 = np.asarray(l32, np.float64), np.asarray(l16, np.float64)
  if family == "pfn":  # only the query rows' outputs are predictions
    l32, l16 = l32[:, 6:], l16[:, 6:]
  rel = np.linalg.norm(l16 - l32) / np.linalg.norm(l32)
  bound = 4 * U_BF16 * np.sqrt(2 * num_layers / 3)
  assert rel <= bound, (family, rel, bound, num_layers)
  # And bf16 really rounds: the two are not bit-identical.
  assert rel > 0
