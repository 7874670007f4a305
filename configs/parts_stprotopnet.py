r"""ST-ProtoPNet (support + trivial prototypes) on mnist_parts, a CPU run.

  python -m jaxdl.train --config configs/parts_stprotopnet.py --workdir /tmp/parts_st

cwangrun/ST-ProtoPNet's losses (`settings_CUB_CAR.py`: clst_trv -0.8, sep_trv 0.08,
clst_spt -0.8, sep_spt 0.48, orth 1e-3, l1 1e-4, discr 1.0, close 1.0) on alternating
trivial / support batches, prototypes re-normalized after every step, 5 prototypes of dim 64
per class and per branch, conv-Tanh-conv-Tanh add-on layers; the backbone, data and epochs of
configs/parts_protopnet.py, one push of both branches after the last epoch followed by the
last layers.
"""

import importlib.util
from pathlib import Path


def _load(name):
  spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  c = _load("parts_protopnet").get_config(arg)
  c.model.name = "stprotopnet"
  c.model.prototypes_per_class = 5 if arg != "runlocal" else 2
  c.coefs = dict(crs_ent=1.0, clst_trv=-0.8, sep_trv=0.08, clst_spt=-0.8, sep_spt=0.48,
                 orth=1e-3, l1=1e-4, discr=1.0, close=1.0)
  c.weight_decay = 0.5e-3  # ST-ProtoPNet: 0.5 x 1e-3 for ResNet / VGG backbones
  c.normalize_prototypes = True
  return c
