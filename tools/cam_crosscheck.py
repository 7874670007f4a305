r"""jaxdl.analysis.cam vs pytorch-grad-cam (PyPI `grad-cam`) on the same timm models.

Run outside CI, in an environment with torch + timm + grad-cam + jax/flax:

  PYTHONPATH=. /work/torchvenv/bin/python tools/cam_crosscheck.py \
      --models densenet121 resnet50 --batch 4 --resolution 224

Each timm model gets seeded random weights (`timm_convert.random_timm_state_dict`, non-trivial
BatchNorm statistics; no pretrained weights can be downloaded here), which are converted with
`jaxdl.models.load_timm_state_dict`. Both libraries explain the same seeded inputs for the
same per-image classes (and, once, for the arg max class) at the target layers that
pytorch-grad-cam's README recommends (resnet: `layer4[-1]`, densenet: `features[-1]` = timm's
norm5 BatchNormAct2d) and at a two-layer list. Maps are compared after both libraries'
normalization to [0, 1]; the pass criterion is max |difference| < 1e-4.

Eigen-CAM: pytorch-grad-cam's `EigenCAM` keeps LAPACK's arbitrary sign of the singular
vector, jaxdl applies the sign correction of pytorch-grad-cam's own
`get_2d_projection_with_sign_correction`; the check compares with `EigenCAM` using that
function (and reports how many raw `EigenCAM` maps agree too).

With --road it also checks the ROAD noisy linear imputation (noise 0) against
pytorch-grad-cam's `NoisyLinearImputer` (scipy sparse solve) on the same images and masks,
in float32 (reported) and float64 (checked against the tolerance): float32 conjugate
gradients stop at ~cond * eps, around 1e-4 for holes 100+ pixels wide.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import timm
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

import jax
import jax.numpy as jnp

import jaxdl.models as models
from jaxdl.analysis import cam
from jaxdl.models import timm_convert as tc

VAR_RANGE = {"resnet50": (0.5, 4.0)}  # as tests/models/test_timm_crosscheck.py


class SignCorrectedEigenCAM(EigenCAM):
  def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads,
                    eigen_smooth):
    return get_2d_projection_with_sign_correction(activations)


def torch_layers(name, tmodel):
  """(README default layer, two-layer list) and the matching jaxdl target specs."""
  if name.startswith("resnet"):
    return ([tmodel.layer4[-1]], [tmodel.layer3[-1], tmodel.layer4[-1]],
            None, [f"layer3_{len(tmodel.layer3) - 1}", f"layer4_{len(tmodel.layer4) - 1}"])
  if name.startswith("densenet"):
    return ([tmodel.features[-1]], [tmodel.features.denseblock4, tmodel.features[-1]],
            None, ["denseblock4", "norm5:relu"])
  raise SystemExit(f"no layer mapping for {name}")


def run_torch(cls, tmodel, layers, xt, classes):
  targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
  with cls(model=tmodel, target_layers=layers) as m:
    return m(input_tensor=xt, targets=targets)


def check(name, batch, resolution, seed):
  torch.manual_seed(0)
  tmodel = timm.create_model(name, pretrained=False).eval()
  spec = [(k, tuple(v.shape)) for k, v in tmodel.state_dict().items()]
  sd = tc.random_timm_state_dict(spec, seed=1, var_range=VAR_RANGE.get(name, (0.5, 1.5)))
  tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  variables = models.load_timm_state_dict(name, tmodel.state_dict())
  model = models.create(name)
  x = tc.golden_input(seed, batch, resolution)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  classes = np.random.default_rng(seed).integers(0, 1000, batch)
  one, two, jone, jtwo = torch_layers(name, tmodel)
  with torch.no_grad():
    logits_t = tmodel(xt).numpy()
  logits_j = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, x))
  rows = [dict(model=name, what="logits", max_abs_diff=float(np.abs(logits_t - logits_j).max()),
               scale=float(np.abs(logits_t).max()))]
  cases = [
      ("GradCAM", GradCAM, cam.grad_cam, one, jone, classes),
      ("GradCAM argmax", GradCAM, cam.grad_cam, one, jone, None),
      ("GradCAM++", GradCAMPlusPlus, cam.grad_cam_plus_plus, one, jone, classes),
      ("GradCAM 2 layers", GradCAM, cam.grad_cam, two, jtwo, classes),
      ("EigenCAM (sign-corrected)", SignCorrectedEigenCAM, cam.eigen_cam, one, jone, None),
  ]
  for label, tcls, fn, tl, jl, cls in cases:
    t0 = time.perf_counter()
    want = run_torch(tcls, tmodel, tl, xt, cls)
    t1 = time.perf_counter()
    kw = {} if fn is cam.eigen_cam else {"classes": cls}
    got = np.asarray(fn(model, variables, jnp.asarray(x), target_layer=jl, **kw))
    t2 = time.perf_counter()
    diff = np.abs(got - want)
    rows.append(dict(model=name, what=label, max_abs_diff=float(diff.max()),
                     mean_abs_diff=float(diff.mean()), shape=list(got.shape),
                     torch_s=round(t1 - t0, 2), jax_s_incl_compile=round(t2 - t1, 2)))
  # Raw EigenCAM (LAPACK's sign): how many images agree with the sign-corrected jaxdl map.
  want = run_torch(EigenCAM, tmodel, one, xt, None)
  got = np.asarray(cam.eigen_cam(model, variables, jnp.asarray(x), target_layer=jone))
  per_image = np.abs(got - want).reshape(batch, -1).max(1)
  rows.append(dict(model=name, what="EigenCAM (raw LAPACK sign)",
                   images_agreeing=int((per_image < 1e-4).sum()), of=batch,
                   per_image_max_abs_diff=[float(d) for d in per_image]))
  return rows, (model, variables, x, classes)


def check_road(x, seed):
  """jaxdl's conjugate-gradient imputation vs pytorch-grad-cam's scipy solve (noise 0)."""
  from pytorch_grad_cam.metrics.road import NoisyLinearImputer
  from jaxdl.analysis import cam_metrics
  rng = np.random.default_rng(seed)
  n, h, w, _ = x.shape
  # Blob-shaped masks like thresholded CAMs (large connected holes are the hard case).
  yy, xx = np.mgrid[:h, :w]
  keep = np.ones((n, h, w), np.float32)
  for i in range(n):
    cy, cx = rng.uniform(0.2, 0.8, 2) * (h, w)
    keep[i] = ((yy - cy) ** 2 + (xx - cx) ** 2 > (0.3 * h) ** 2).astype(np.float32)
    keep[i][rng.uniform(size=(h, w)) < 0.2] = 0.0
  imputer = NoisyLinearImputer(noise=0.0)
  want = np.stack([imputer(torch.from_numpy(x[i].transpose(2, 0, 1).copy()),
                           torch.from_numpy(keep[i])).numpy().transpose(1, 2, 0)
                   for i in range(n)])
  out = dict(what="ROAD imputation (noise 0)", removed_fraction=float(1 - keep.mean()),
             shape=list(x.shape))
  got = np.asarray(cam_metrics.noisy_linear_impute(
      jnp.asarray(x), jnp.asarray(keep), rng_key=jax.random.key(0), noise=0.0))
  out["max_abs_diff_float32"] = float(np.abs(got - want).max())
  # The same conjugate gradients in float64: the algorithm, without float32's conditioning
  # floor (the system's condition number grows with the hole's width squared).
  with jax.enable_x64(True):
    got = np.asarray(cam_metrics.noisy_linear_impute(
        jnp.asarray(x, jnp.float64), jnp.asarray(keep), rng_key=jax.random.key(0), noise=0.0,
        tol=1e-10, max_iterations=20000))
  out["max_abs_diff"] = out["max_abs_diff_float64"] = float(np.abs(got - want).max())
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", nargs="+", default=["densenet121", "resnet50"])
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--resolution", type=int, default=224)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--road", action="store_true")
  p.add_argument("--tolerance", type=float, default=1e-4)
  args = p.parse_args()
  all_rows, ok = [], True
  last = None
  for name in args.models:
    rows, last = check(name, args.batch, args.resolution, args.seed)
    for r in rows:
      print(json.dumps(r))
      if r["what"] not in ("logits", "EigenCAM (raw LAPACK sign)"):
        ok &= r["max_abs_diff"] < args.tolerance
    all_rows += rows
  if args.road and last is not None:
    r = check_road(last[2], args.seed)
    print(json.dumps(r))
    ok &= r["max_abs_diff"] < args.tolerance
  print("PASS" if ok else "FAIL", f"(max abs diff < {args.tolerance} on every CAM)")
  raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
  main()
