"""Correctness of jaxdl's kernels compiled for the real device (no interpret mode).

  PYTHONPATH=. python tools/gpu_check.py            # on a GPU/TPU: every kernel, every impl
  PYTHONPATH=. python tools/gpu_check.py --interpret  # CPU: the same checks in interpret mode

The CI tests run the kernels in interpret mode on CPU; this script is the check to run first
on an accelerator, before any timing (BENCHMARKS.md, "Accelerator throughput"). For each
kernel and implementation it draws fresh random inputs, computes outputs and gradients on the
device, and compares them with a float64 reference computed on the host (numpy via jax's CPU
backend with x64), reporting ||out - ref|| / ||ref||. Outputs are also checked to be finite
(an unwritten tile shows up as NaN/garbage). bf16 operands are expected between 1e-3 and
1e-2, float32 under 1e-3 (tf32 matmuls near 3e-4). Exits non-zero if any check fails or
a kernel does not compile.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

CPU = jax.devices("cpu")[0]


def _rel(a, b):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if not np.all(np.isfinite(a)):
    return float("inf")
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _host64(fn, *args):
  """fn evaluated on the CPU in float64 (a reference independent of the device kernels)."""
  with jax.enable_x64(True), jax.default_device(CPU):
    args = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), args)
    return jax.tree.map(np.asarray, fn(*args))


def check_dense_bottleneck(impl, interpret, rng, tol):
  from jaxdl.kernels import dense_bottleneck as db
  rows = []
  for n, hw, sizes, c_out in ((2, 16, [64, 32, 32], 128), (4, 56, [64] + [32] * 5, 128),
                              (4, 28, [128, 32, 32, 32], 128)):
    xs = tuple(jnp.asarray(rng.standard_normal((n, hw, hw, c)), jnp.bfloat16) for c in sizes)
    c = sum(sizes)
    scale = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
    shift = jnp.asarray(rng.normal(0, 0.3, c), jnp.float32)
    w = jnp.asarray(rng.standard_normal((c, c_out)) / np.sqrt(c), jnp.bfloat16)
    g = jnp.asarray(rng.standard_normal((n, hw, hw, c_out)), jnp.float32)

    def loss(fn):
      return lambda xs, s, b, w: jnp.sum(fn(xs, s, b, w).astype(g.dtype) * g)
    dev = jax.jit(jax.value_and_grad(loss(lambda *a: db.dense_bottleneck(
        *a, impl=impl, interpret=interpret, out_dtype=jnp.float32)), argnums=(0, 1, 2, 3)))
    ref = jax.value_and_grad(loss(lambda *a: db.dense_bottleneck_reference(*a)),
                             argnums=(0, 1, 2, 3))
    y = jax.jit(lambda *a: db.dense_bottleneck(*a, impl=impl, interpret=interpret,
                                               out_dtype=jnp.float32))(xs, scale, shift, w)
    y_ref = _host64(lambda *a: db.dense_bottleneck_reference(*a), xs, scale, shift, w)
    (_, grads) = dev(xs, scale, shift, w)
    (_, grads_ref) = _host64(ref, xs, scale, shift, w)
    errs = {"y": _rel(y, y_ref)}
    for name, a, b in zip(("dxs", "dscale", "dshift", "dW"), grads, grads_ref):
      errs[name] = max(_rel(x, r) for x, r in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    rows.append((f"dense_bottleneck[{impl}] {n}x{hw}x{hw} {sizes}->{c_out}", errs, tol))
  return rows


def check_prototype(impl, interpret, rng, tol):
  from jaxdl.kernels import prototype_distance as pd
  rows = []
  for n, hw, p_num, d, metric, dtype in ((8, 49, 200, 128, "l2", jnp.float32),
                                         (80, 196, 2000, 128, "l2", jnp.float32),
                                         (16, 196, 500, 64, "dot", jnp.float32),
                                         (16, 49, 300, 128, "l2", jnp.bfloat16),
                                         (80, 196, 2000, 128, "l2", jnp.bfloat16),
                                         (16, 196, 500, 64, "dot", jnp.bfloat16)):
    if impl == "mosaic_gpu" and dtype != jnp.bfloat16:
      continue  # wgmma operands: bf16/f16 only
    z = jnp.asarray(rng.uniform(0, 1, (n, hw, d)), dtype)
    p = jnp.asarray(rng.uniform(0, 1, (p_num, d)), dtype)
    g = jnp.asarray(rng.standard_normal((n, p_num)), jnp.float32)
    dist, idx = jax.jit(lambda z, p: pd.prototype_min_distance(
        z, p, metric=metric, impl=impl, interpret=interpret))(z, p)
    dmap = _host64(lambda z, p: pd.prototype_distance_map(z, p, metric=metric), z, p)
    ref_min = dmap.min(axis=1)
    # The argmin must attain the min up to rounding of the operands (ties may differ).
    picked = np.take_along_axis(dmap, np.asarray(idx)[:, None, :], axis=1)[:, 0]
    grads = jax.jit(jax.grad(lambda z, p: jnp.sum(pd.prototype_min_distance(
        z, p, metric=metric, impl=impl, interpret=interpret)[0] * g), argnums=(0, 1)))(z, p)
    # Gradient reference at the kernel's own argmin: with tf32/bf16 dots near-ties may pick
    # another (equally minimal) position than float64 would, and the gradient of a min is
    # the gradient at the chosen position. float64 autodiff of the distance written directly.
    sel = np.asarray(idx)

    def picked_distance(z, p):
      zs = jnp.take_along_axis(z, jnp.asarray(sel)[..., None], axis=1)  # [N, P, D]
      if metric == "l2":
        return jnp.sum(jnp.square(zs - p[None]), axis=-1)
      return -jnp.sum(zs * p[None], axis=-1)
    grads_ref = _host64(jax.grad(lambda z, p: jnp.sum(picked_distance(z, p) * g),
                                 argnums=(0, 1)), z, p)
    errs = {"min": _rel(dist, ref_min), "min at argmin": _rel(picked, ref_min),
            "dz": _rel(grads[0], grads_ref[0]), "dp": _rel(grads[1], grads_ref[1])}
    rows.append((f"prototype[{impl}] {n}x{hw}x{d} P={p_num} {metric} {jnp.dtype(dtype).name}",
                 errs, tol * (10 if dtype == jnp.bfloat16 else 1)))
  return rows


def check_attention(impl, interpret, rng, tol):
  from jaxdl.kernels import attention as at
  rows = []
  for b, t, h, d in ((2, 128, 2, 64), (8, 1024, 4, 64)):
    q, k, v = (jnp.asarray(rng.standard_normal((b, t, h, d)), jnp.bfloat16) for _ in range(3))
    nc = jnp.asarray(rng.integers(1, t, b), jnp.int32)
    g = jnp.asarray(rng.standard_normal((b, t, h, d)), jnp.float32)

    def loss(fn):
      return lambda q, k, v: jnp.sum(fn(q, k, v).astype(g.dtype) * g)
    o = jax.jit(lambda q, k, v: at.context_attention(q, k, v, nc, impl=impl,
                                                     interpret=interpret))(q, k, v)
    o_ref = _host64(lambda q, k, v, nc: at.context_attention_reference(q, k, v, nc),
                    q, k, v, nc)
    grads = jax.jit(jax.grad(loss(lambda q, k, v: at.context_attention(
        q, k, v, nc, impl=impl, interpret=interpret)), argnums=(0, 1, 2)))(q, k, v)
    grads_ref = _host64(lambda q, k, v, nc: jax.grad(loss(
        lambda q, k, v: at.context_attention_reference(q, k, v, nc)), argnums=(0, 1, 2))(
            q, k, v), q, k, v, nc)
    errs = {"o": _rel(o, o_ref)}
    errs.update({n: _rel(a, r) for n, a, r in zip(("dq", "dk", "dv"), grads, grads_ref)})
    rows.append((f"attention[{impl}] B={b} T={t} H={h} D={d} bf16", errs, tol))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--interpret", action="store_true", help="interpret mode (CPU)")
  parser.add_argument("--kernels", nargs="+", default=["dense_bottleneck", "prototype",
                                                       "attention"])
  args = parser.parse_args(argv)
  backend = jax.default_backend()
  print(f"jax {jax.__version__}, backend {backend}, device {jax.devices()[0].device_kind}")
  rng = np.random.default_rng()  # fresh inputs every run (METHOD: same function on any input)
  gpu = backend == "gpu"
  plan = []
  if "dense_bottleneck" in args.kernels:
    plan += [(check_dense_bottleneck, i, 2e-2) for i in
             (["mosaic_gpu", "pallas"] if gpu else ["pallas"] + (["mosaic_gpu"]
                                                                  if args.interpret else []))]
  if "prototype" in args.kernels:
    from jaxdl.kernels import prototype_distance as pd
    plan += [(check_prototype, i, 1e-3) for i in
             (["pallas", "mosaic_gpu"] if gpu or args.interpret else ["pallas"])]
  if "attention" in args.kernels:
    plan += [(check_attention, i, 2e-2) for i in (["dpa", "pallas"] if gpu else ["pallas"])]
  failed = 0
  for fn, impl, tol in plan:
    try:
      rows = fn(impl, args.interpret, rng, tol)
    except Exception as e:  # report and go on: one broken kernel must not hide the others
      failed += 1
      print(f"FAIL {fn.__name__}[{impl}]: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
      traceback.print_exc(limit=3)
      continue
    for label, errs, t in rows:
      ok = all(e <= t for e in errs.values())
      failed += not ok
      print(("ok   " if ok else "FAIL ") + label + "  " +
            "  ".join(f"{k} {v:.1e}" for k, v in errs.items()) + f"  (tol {t:.0e})", flush=True)
  print(f"{failed} failed")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
