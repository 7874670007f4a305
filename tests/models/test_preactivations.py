"""Every zoo model sows the input of every ReLU-like nonlinearity under `preactivations`.

Independent count: the nonlinearities applied in the traced forward pass (jaxpr), i.e. the
`relu` / `relu6` calls and, for GELU models, the `erfc` primitives, against the
number of arrays the model sows. Tracing only (`jax.make_jaxpr` on abstract variables): no
compilation. One small variant per family.
"""

import jax
import jax.extend  # noqa: F401 (jax.extend.core)
import jax.numpy as jnp
import pytest

import jaxdl.models as models

CASES = [  # name, input side, overrides (small variants of the same code)
    ("densenet_bc_100_k12", 8, dict(growth_rate=4, block_config=(2, 2))),
    ("densenet121", 32, dict(growth_rate=4, block_config=(1, 1, 1, 1))),
    ("resnet18", 32, {}),
    ("resnet50", 32, {}),
    ("resnet20", 8, {}),
    ("preact_resnet18", 8, dict(width=16, use_bn=False)),
    ("vgg11_bn", 32, {}),
    ("mobilenetv2_035", 32, {}),
    ("mcunet_in0", 32, {}),
    ("rdnet_tiny", 32, dict(growth_rates=(16, 32), num_blocks_list=(1, 1),
                            is_downsample_block=(False, True),
                            block_types=("Block", "BlockESE"))),
    ("cnn_small", 8, {}),
    ("cnn", 8, dict(use_bn=True)),
]


def _count_nonlinearities(jaxpr) -> int:
  """jax.nn.relu / relu6 each trace to one `jit[name=relu|relu6]`, exact GELU to one erfc.

  Not counted: the hard sigmoid of RDNet's effective-SE gate (a relu6 inside
  `jit[name=hard_sigmoid]`), a gate rather than a feature nonlinearity.
  """
  n = 0
  for eqn in jaxpr.eqns:
    name = eqn.params.get("name")
    if name in ("relu", "relu6") or eqn.primitive.name in ("erf", "erfc"):
      n += 1
      continue
    if name == "hard_sigmoid":
      continue
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      n += _count_nonlinearities(sub)
  return n


@pytest.mark.parametrize("name,side,overrides", CASES, ids=[c[0] for c in CASES])
def test_every_nonlinearity_input_is_sown(name, side, overrides):
  model = models.create(name, **overrides)
  x = jnp.zeros((1, side, side, 3), jnp.float32)
  v = jax.eval_shape(model.init, jax.random.key(0), x)
  v = {k: v[k] for k in ("params", "batch_stats") if k in v}
  apply = lambda v, x: model.apply(v, x, mutable=["preactivations"])
  closed = jax.make_jaxpr(apply)(v, x)
  _, state = jax.eval_shape(apply, v, x)
  sown = jax.tree_util.tree_leaves(state["preactivations"])
  expected = _count_nonlinearities(closed.jaxpr)
  assert expected > 0
  assert len(sown) == expected, (len(sown), expected)
