r"""ProtoPNet on CUB-200-2011 with a ResNet-34 backbone: the settings of cfchen-duke/ProtoPNet.

  python -m jaxdl.train --config configs/cub_protopnet_resnet34.py --workdir /tmp/cub_protopnet

Data: $JAXDL_DATA_DIR/CUB_200_2011 (bird crops resized to 224 as in the paper; the paper's
offline augmentation of the training set is not reproduced). 2000 prototypes (10 per class)
of dim 128, add-on conv-ReLU-conv-Sigmoid, batch 80; warm-up 5 epochs (add-on and
prototypes, lr 3e-3), joint (backbone 1e-4, add-on 3e-3, prototypes 3e-3, StepLR 5 x 0.1),
push every 10 epochs from epoch 10 followed by 20 last-layer epochs (lr 1e-4); losses CE 1,
cluster 0.8, separation -0.08, L1 1e-4. The paper starts from ImageNet weights; jaxdl has
none offline, so this trains the backbone from scratch unless weights are loaded.
`:runlocal` is a CPU smoke run on the mnist_parts dataset with a small CNN.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = "protopnet"
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(
      name="protopnet", backbone="resnet34", prototypes_per_class=10, prototype_dim=128))
  c.dataset = ml_collections.ConfigDict(dict(
      name="cub200", data_dir="", train_split="train", eval_split="test", augment=None,
      kwargs={}))
  c.batch_size = 80
  c.eval_batch_size = 100
  c.num_epochs = 31          # pushes after epochs 10, 20 and 30 (0-based), each + last layer
  c.warm_epochs = 5
  c.push_epochs = (10, 20, 30)
  c.last_layer_epochs = 20
  c.lr = ml_collections.ConfigDict(dict(
      features=1e-4, add_on=3e-3, prototypes=3e-3, last_layer=1e-4, activation_weight=0.0))
  c.weight_decay = 1e-3
  c.joint_lr_step = 5
  c.joint_lr_gamma = 0.1
  c.coefs = ml_collections.ConfigDict(dict(crs_ent=1.0, clst=0.8, sep=-0.08, l1=1e-4,
                                           orth=0.0, consis=0.0))
  c.sdfa_threshold = 0.1
  c.normalize_prototypes = False
  # Consistency / stability on annotated test images (CUB: half_size 36 for 224 pixels).
  c.interpretability = ml_collections.ConfigDict(dict(half_size=36, threshold=0.8))
  c.log_every_steps = 50
  c.max_steps_per_epoch = 0
  c.num_train_examples = 0
  return c


def parts_setting(c, arg=None):
  """The mnist_parts CPU setting shared by the small variants (and `runlocal`)."""
  c.model.backbone = "cnn"
  c.model.backbone_kwargs = dict(features=(32, 64, 128, 128), convs_per_stage=2, use_bn=True)
  c.model.prototypes_per_class = 10
  c.dataset.name = "mnist_parts"
  c.dataset.kwargs = dict(num_classes=10, image_size=64)
  c.train_subset = "first"            # mnist_parts is already shuffled
  c.interpretability.half_size = 10   # 36 * 64 / 224
  c.batch_size = 64
  c.eval_batch_size = 250
  c.log_every_steps = 20
  if arg == "runlocal":
    c.model.backbone_kwargs = dict(features=(8, 16, 16, 16), convs_per_stage=1, use_bn=True)
    c.model.prototypes_per_class = 2
    c.model.prototype_dim = 16
    c.dataset.kwargs = dict(num_classes=10, image_size=64)
    c.num_train_examples = 256
    c.batch_size = 32
    c.max_steps_per_epoch = 3
    c.eval_batch_size = 500
    c.interpretability.num_images = 200
  return c


def get_config(arg=None):
  c = base_config()
  if arg == "runlocal":
    c = parts_setting(c, arg)
    c.num_epochs = 3
    c.warm_epochs = 1
    c.push_epochs = (2,)
    c.last_layer_epochs = 2
  return c
