"""Parameter counts: exactly timm's for ImageNet models (issue 3), closed forms for CIFAR ones.

Counted on `jax.eval_shape(model.init)`: no parameters are materialized.
"""

import pytest

import jaxdl.models as models

# timm 1.0 `sum(p.numel() for p in timm.create_model(name).parameters())`, 1000 classes.
TIMM_COUNTS = {
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "densenet161": 28_681_000,
    "rdnet_tiny": 23_863_008,
    "rdnet_small": 50_436_448,
    "rdnet_base": 87_451_096,
    "rdnet_large": 186_269_632,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "vgg11": 132_863_336,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
}


# Tracing a big model's init costs seconds on 2 shared cores: the default suite checks one
# model per family; the rest run with `-m slow` (results in RESULTS.md).
_DEFAULT = {"densenet121", "rdnet_tiny", "resnet18", "resnet50", "vgg19"}


@pytest.mark.parametrize("name", [n if n in _DEFAULT else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(TIMM_COUNTS)])
def test_imagenet_param_counts_equal_timm(name, abstract_variables, count_params):
  assert count_params(abstract_variables(name)["params"]) == TIMM_COUNTS[name]


def _densenet_bc_cifar(k, n, num_classes, bn_size=4):
  """Closed form of Huang et al.'s CIFAR DenseNet-BC: 3x3 stem (2k), 3 blocks of n layers."""
  total = 3 * 3 * 3 * 2 * k
  c = 2 * k
  for b in range(3):
    for _ in range(n):
      total += 2 * c + c * bn_size * k + 2 * bn_size * k + 9 * bn_size * k * k
      c += k
    if b < 2:
      total += 2 * c + c * (c // 2)
      c //= 2
  return total + 2 * c + c * num_classes + num_classes


def _cifar_resnet(n, num_classes):
  """He et al. 2016a Sec. 4.2 with option-A shortcuts: no shortcut parameters."""
  total = 27 * 16 + 2 * 16
  c_in = 16
  for c in (16, 32, 64):
    for _ in range(n):
      total += 9 * c_in * c + 2 * c + 9 * c * c + 2 * c
      c_in = c
  return total + 64 * num_classes + num_classes


@pytest.mark.parametrize("name,expected,paper", [
    ("densenet_bc_100_k12", _densenet_bc_cifar(12, 16, 10), 0.8e6),
    pytest.param("densenet_bc_190_k40", _densenet_bc_cifar(40, 31, 10), 25.6e6,
                 marks=pytest.mark.slow),
    pytest.param("densenet_bc_250_k24", _densenet_bc_cifar(24, 41, 10), 15.3e6,
                 marks=pytest.mark.slow),
    ("resnet20", _cifar_resnet(3, 10), 0.27e6),
    ("resnet56", _cifar_resnet(9, 10), 0.85e6),
])
def test_cifar_param_counts(name, expected, paper, abstract_variables, count_params):
  n = count_params(abstract_variables(name, resolution=32)["params"])
  assert n == expected
  # And the papers' rounded numbers (DenseNet Table 2, ResNet Table 6).
  assert abs(n - paper) / paper < 0.04


def test_preact_resnet18_width_and_bn(abstract_variables, count_params):
  full = abstract_variables("preact_resnet18", resolution=32)
  grok = abstract_variables("preact_resnet18", resolution=32, width=16, use_bn=False)
  assert "batch_stats" not in grok  # no BatchNorm at all: a plain pytree for analysis code
  # 3x3 stem, 4 stages (w, 2w, 4w, 8w) of 2 pre-activation blocks, 1x1 shortcuts where the
  # shape changes, linear head; with BN each block adds 2 (bn1 over c_in, bn2 over c).
  def count(w, bn):
    total, c_in = 27 * w, w
    for s in range(4):
      c = w * 2 ** s
      for b in range(2):
        total += 9 * c_in * c + 9 * c * c + (2 * c_in + 2 * c if bn else 0)
        total += c_in * c if c_in != c else 0
        c_in = c
    return total + 8 * w * 10 + 10
  assert count_params(full["params"]) == count(64, True) == 11_171_146  # kuangliu: 11.17M
  assert count_params(grok["params"]) == count(16, False)


def test_registry_lists_the_zoo():
  names = set(models.list_models())
  assert set(TIMM_COUNTS) | {"densenet_bc_100_k12", "densenet_bc_250_k24",
                             "densenet_bc_190_k40", "resnet20", "resnet56",
                             "preact_resnet18"} <= names
  assert models.family_of("rdnet_large") == "rdnet"
