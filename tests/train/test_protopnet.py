"""The multi-phase trainer: lr schedule, parameter groups and a tiny end-to-end run."""

import importlib.util
import json

import numpy as np
import pytest

from jaxdl.train import get_trainer
from jaxdl.train import protopnet as tp


def load_config(repo_root, name, arg=None):
  spec = importlib.util.spec_from_file_location(name, repo_root / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_joint_lr_follows_torch_steplr(repo_root):
  c = load_config(repo_root, "cub_protopnet_resnet34")
  # StepLR(step 5, gamma 0.1) stepped before each joint epoch: epochs 0-3 full, 4-8 x0.1
  factors = [tp.joint_lr_factor(j, c) for j in range(10)]
  np.testing.assert_allclose(factors, [1] * 4 + [0.1] * 5 + [0.01])


def test_param_groups():
  assert tp.param_group("features") == "features"
  assert tp.param_group("add_on_layers_trivial") == "add_on"
  assert tp.param_group("prototypes_support") == "prototypes"
  assert tp.param_group("last_layer") == "last_layer"
  assert tp.param_group("activation_weight") == "activation_weight"


def test_paper_configs(repo_root):
  p = load_config(repo_root, "cub_protopnet_resnet34")
  assert (p.model.prototypes_per_class * 200, p.model.prototype_dim) == (2000, 128)
  assert (p.coefs.clst, p.coefs.sep, p.coefs.l1) == (0.8, -0.08, 1e-4)
  e = load_config(repo_root, "cub_evalprotopnet_resnet34")
  assert (e.model.prototype_dim, e.coefs.consis, e.coefs.orth, e.num_epochs) == (64, 0.5,
                                                                                 1e-4, 12)


@pytest.mark.parametrize("name", ["parts_protopnet",
                                  pytest.param("parts_evalprotopnet", marks=pytest.mark.slow)])
def test_tiny_end_to_end_run(data_dir, repo_root, tmp_path, name):
  c = load_config(repo_root, name, "runlocal")
  c.num_train_examples = 64
  c.max_steps_per_epoch = 2
  c.dataset.kwargs = dict(num_classes=10, image_size=64, num_examples=100)
  c.interpretability.num_images = 30
  out = get_trainer("protopnet")(c, tmp_path)
  assert 0.0 <= out["final_accuracy"] <= 1.0
  assert 0.0 <= out["consistency"] <= 100.0 and 0.0 <= out["stability"] <= 100.0
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  phases = [r["phase"] for r in records if "phase" in r]
  assert phases == ["warm", "joint"]
  if name == "parts_protopnet":
    push = np.load(tmp_path / "push.npz")
    labels = np.asarray(__import__("jaxdl").data.load(
        "mnist_parts", "train", num_classes=10, num_examples=100)["targets"][:64])
    assert (labels[push["image"]] == np.arange(20) // 2).all()  # pushed within its class
    assert "eval/accuracy_last_layer" in records[-2]
  else:
    assert np.isfinite([r.get("train/epoch_sdfa", 0.0) for r in records]).all()


def test_st_losses_alternate_branches(repo_root):
  import jax
  import jax.numpy as jnp
  import optax
  from jaxdl import models
  from jaxdl.layers.prototype import class_identity, l2_normalize
  from jaxdl.models import protopnet as pp
  c = load_config(repo_root, "parts_stprotopnet")
  model = models.create("stprotopnet", num_classes=2, prototypes_per_class=2, prototype_dim=3)
  rng = np.random.default_rng(0)
  params = {f"prototypes_{b}": {"prototype_vectors": jnp.asarray(rng.normal(size=(4, 3)))}
            for b in ("trivial", "support")}
  params.update({f"last_layer_{b}": {"kernel": jnp.asarray(rng.normal(size=(4, 2)))}
                 for b in ("trivial", "support")})
  aux = {b: {"logits": jnp.asarray(rng.normal(size=(3, 2))),
             "similarities": jnp.asarray(rng.uniform(-1, 1, size=(3, 4)))}
         for b in ("trivial", "support")}
  y = jnp.array([0, 1, 1])
  ident = class_identity(4, 2)
  for step, b, clst_c, sep_c, extra in ((0, "trivial", -0.8, 0.08, pp.discrimination),
                                        (1, "support", -0.8, 0.48, pp.closeness)):
    loss, _ = tp.prototype_losses(model, params, None, aux, y, c, branch_step=step)
    protos = l2_normalize(params[f"prototypes_{b}"]["prototype_vectors"])
    clst, sep = pp.max_similarity_terms(aux[b]["similarities"], y, ident)
    want = (optax.softmax_cross_entropy_with_integer_labels(aux[b]["logits"], y).mean()
            + clst_c * clst.mean() + sep_c * sep.mean() + 1e-3 * pp.orthogonality(protos, 2)
            + 1.0 * extra(protos, 2)
            + 1e-4 * pp.l1_wrong_class(params[f"last_layer_{b}"]["kernel"], ident))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
