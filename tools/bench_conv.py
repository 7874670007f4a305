"""Convolution layers on the current backend: `lax.conv_general_dilated` vs jaxdl's dispatch.

  PYTHONPATH=. python tools/bench_conv.py --repeats 7

For each layer shape taken from the model zoo, times the jitted forward pass and the
backward pass (the VJP: gradients with respect to input and kernel for a given cotangent) of
`jaxdl.layers.conv.conv_general_dilated` with impl="xla" (the convolution) and impl="fast"
(pointwise / patchify as matmuls, depthwise as shifted multiply-adds, dense stride-1 with
the tap-sum forward and the tap-replicated-cotangent VJP), alternating the two
call by call after a warm-up, median of --repeats. Reports ms, GFLOP/s of the layer's
multiply-adds (2 * MACs forward, 4 * MACs backward) and the ratio xla / fast
(> 1: the fast formulation is faster). Shapes marked "control" take the convolution in
both (3x3 dense, stride 2), so their ratio shows the measurement noise.

  PYTHONPATH=. python tools/bench_conv.py --dense --repeats 7

Dense contractions (a 1x1 convolution's or a dense layer's input [*A, K] times kernel
[K, F]) through `jaxdl.layers.dense.dot_general`: impl="xla" is the dot over the input's
axes as they are, impl="fast" the same dot on [prod A, K] (one 2-D matmul). The backward pass
here takes the cotangent from an elementwise op (max(g * s + 1, 0), as a BatchNorm / ReLU
backward would produce it): in a network that producer is where XLA:CPU fuses the
transpose it inserts for the 4-D dot's kernel gradient.

  PYTHONPATH=. python tools/bench_conv.py --pool --repeats 7

Max pooling (POOL_SHAPES): `jaxdl.layers.pool.max_pool` with impl="xla" (`nn.max_pool`,
XLA's reduce-window and its gradient) and impl="fast" (the custom VJP); "bwd" is the VJP
(forward + backward), GB/s counts the input read once and its gradient written once.

  PYTHONPATH=. python tools/bench_conv.py --dw-kgrad --repeats 10

The stride-1 depthwise kernel gradient of one image (DW_KGRAD_SHAPES: RDNet-T's 7x7 at the
widest layer of each stage): column "fast" is `_depthwise_kernel_grad` (per block of rows,
one variadic reduction per group of <= 16 taps), column "xla" a baseline: --dw-kgrad-baseline
whole (default) is one reduction per tap over the whole image (the VJP until 2026-12-03),
per-tap-rows one reduction per tap over blocks of rows (2026-12-03 evening and night),
one-reduce one variadic reduction of all taps per block of rows (2026-12-04 until the third
GPU session).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.layers import conv as lc
from jaxdl.layers import dense as ld
from jaxdl.layers import pool as lp

DN = ("NHWC", "HWIO", "NHWC")
# name, input [N, H, W, C], kernel [kh, kw, C/groups, O], strides, padding, groups
SHAPES = [
    ("densenet121 block1 1x1", (8, 56, 56, 256), (1, 1, 256, 128), 1, "VALID", 1),
    ("resnet50 layer1 1x1 reduce", (8, 56, 56, 256), (1, 1, 256, 64), 1, "VALID", 1),
    ("resnet50 layer2 downsample 1x1/2", (8, 56, 56, 256), (1, 1, 256, 512), 2, "VALID", 1),
    ("densenet_bc_100 1x1 (C=108)", (32, 32, 32, 108), (1, 1, 108, 48), 1, "VALID", 1),
    ("rdnet_tiny stem 4x4/4", (8, 224, 224, 3), (4, 4, 3, 64), 4, "VALID", 1),
    ("rdnet_tiny transition 2x2/2", (8, 56, 56, 256), (2, 2, 256, 160), 2, "VALID", 1),
    ("rdnet_tiny mixer 1x1 expand", (8, 56, 56, 64), (1, 1, 64, 256), 1, "VALID", 1),
    ("rdnet_tiny depthwise 7x7", (8, 56, 56, 64), (7, 7, 1, 64), 1, "SAME", 64),
    ("mobilenetv2 depthwise 3x3", (8, 56, 56, 144), (3, 3, 1, 144), 1, "SAME", 144),
    ("mobilenetv2 depthwise 3x3/2", (8, 56, 56, 144), (3, 3, 1, 144), 2, "SAME", 144),
    ("densenet121 block1 3x3 (128 -> 32)", (8, 56, 56, 128), (3, 3, 128, 32), 1, "SAME", 1),
    ("densenet121 block3 3x3 (128 -> 32)", (8, 14, 14, 128), (3, 3, 128, 32), 1, "SAME", 1),
    ("densenet_bc_100 3x3 (48 -> 12)", (32, 32, 32, 48), (3, 3, 48, 12), 1, "SAME", 1),
    ("resnet50 layer1 3x3", (8, 56, 56, 64), (3, 3, 64, 64), 1, "SAME", 1),
    ("resnet50 layer3 3x3", (8, 14, 14, 256), (3, 3, 256, 256), 1, "SAME", 1),
    ("resnet50 layer4 3x3", (8, 7, 7, 512), (3, 3, 512, 512), 1, "SAME", 1),
    ("resnet50 layer2 3x3/2 (control)", (8, 56, 56, 128), (3, 3, 128, 128), 2, ((1, 1), (1, 1)),
     1),
]
# name, input [*A, K], kernel [K, F]
DENSE_SHAPES = [
    ("densenet121 block1 1x1", (8, 56, 56, 256), (256, 128)),
    ("resnet50 layer1 1x1 expand", (8, 56, 56, 64), (64, 256)),
    ("densenet_bc_100 1x1 (C=108)", (32, 32, 32, 108), (108, 48)),
    ("rdnet_tiny mixer 1x1 expand", (8, 56, 56, 64), (64, 256)),
    ("pfn_tabular:full MLP fc1", (8, 1024, 512), (512, 1024)),
    ("pfn_tabular MLP fc1", (64, 1024, 128), (128, 256)),
    ("protopnet distances (VGG-16 7x7, 2000 prototypes)", (80, 49, 128), (128, 2000)),
]
# name, cotangent [N, H, W, C], window (the padded input is [N, H + kh - 1, W + kw - 1, C])
DW_KGRAD_SHAPES = [
    ("rdnet_tiny stage 1 7x7 (56x56, C=192)", (1, 56, 56, 192), (7, 7)),
    ("rdnet_tiny stage 2 7x7 (28x28, C=400)", (1, 28, 28, 400), (7, 7)),
    ("rdnet_tiny stage 3 7x7 (14x14, C=800)", (1, 14, 14, 800), (7, 7)),
    ("mobilenetv2 3x3 (56x56, C=144)", (1, 56, 56, 144), (3, 3)),
]
# name, input [N, H, W, C], window, strides, padding
POOL_SHAPES = [
    ("resnet50 / densenet121 stem 3x3/2", (8, 112, 112, 64), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ("vgg16 block1 2x2/2", (8, 224, 224, 64), (2, 2), (2, 2), "VALID"),
    ("protopnet vgg16 block3 2x2/2 (batch 80)", (80, 56, 56, 256), (2, 2), (2, 2), "VALID"),
]


def dw_kgrad_whole(xp, g, window, acc=jnp.float32):
  """The depthwise kernel gradient as one reduction per tap over all of g [N, *S, C] (the
  baseline of `jaxdl.layers.conv._depthwise_kernel_grad`, which has the same contract)."""
  terms = lc._shifted_terms(xp, window, (1,) * (g.ndim - 2), g.shape[1:-1])
  return jnp.stack([jnp.sum(t * g.astype(acc), axis=tuple(range(g.ndim - 1)))
                    for _, t in terms])


def dw_kgrad_per_tap_rows(xp, g, window, acc=jnp.float32):
  """The depthwise kernel gradient as `_depthwise_kernel_grad`'s scan over blocks of rows,
  but blocks of 128 KiB of g, each with one reduction per tap: K*K small reductions per block
  (the baseline of its one variadic reduction per block; same contract)."""
  def per_tap(xs, gs, window, acc):
    gs = gs.astype(acc)
    terms = lc._shifted_terms(xs, window, (1,) * (gs.ndim - 2), gs.shape[1:-1])
    return jnp.stack([jnp.sum(t * gs, axis=tuple(range(gs.ndim - 1))) for _, t in terms])
  return lc._depthwise_kernel_grad(xp, g, window, acc, block_sums=per_tap,
                                   block_bytes=128 * 2**10)


def dw_kgrad_one_reduce(xp, g, window, acc=jnp.float32):
  """`_depthwise_kernel_grad` with all taps in one variadic reduction per block of rows."""
  one = lambda xs, gs, window, acc: lc._per_tap_sums(xs, gs, window, acc, 10**9)
  return lc._depthwise_kernel_grad(xp, g, window, acc, block_sums=one)


def _timed(f, args):
  t = time.perf_counter()
  jax.block_until_ready(f(*args))
  return time.perf_counter() - t


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--dense", action="store_true",
                 help="time the dense contractions (DENSE_SHAPES) instead of the convolutions")
  p.add_argument("--pool", action="store_true", help="time max pooling (POOL_SHAPES)")
  p.add_argument("--dw-kgrad", action="store_true",
                 help="time the depthwise kernel gradient (DW_KGRAD_SHAPES): a baseline "
                      "(xla) vs variadic reductions per block of rows (fast)")
  p.add_argument("--dw-kgrad-baseline", choices=("whole", "per-tap-rows", "one-reduce"),
                 default="whole",
                 help="--dw-kgrad's xla column: one reduction per tap over the whole image, "
                      "or per block of rows, or one variadic reduction of all taps per block")
  args = p.parse_args()
  print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), "
        f"repeats {args.repeats} (median)")
  unit = "GB/s" if args.pool else "GFLOP/s"  # pooling: input read + gradient written
  print(f"| layer | pass | xla ms | fast ms | xla {unit} | fast {unit} | xla / fast |")
  print("|---|---|---:|---:|---:|---:|---:|")
  if args.dw_kgrad:
    for name, gs, window in DW_KGRAD_SHAPES:
      xs = (gs[0],) + tuple(s + k - 1 for s, k in zip(gs[1:-1], window)) + gs[-1:]
      x = jax.random.normal(jax.random.key(0), xs)
      g = jax.random.normal(jax.random.key(1), gs)
      base = {"whole": dw_kgrad_whole, "per-tap-rows": dw_kgrad_per_tap_rows,
              "one-reduce": dw_kgrad_one_reduce}[
          args.dw_kgrad_baseline]
      fns = {"xla": jax.jit(lambda x, g, window=window: base(x, g, window)),
             "fast": jax.jit(lambda x, g, window=window: lc._depthwise_kernel_grad(
                 x, g, window, jnp.float32))}
      _report(name, (("kgrad", fns, (x, g), 2 * int(np.prod(gs)) * int(np.prod(window))),),
              args.repeats)
    return
  if args.pool:
    for name, xs, window, strides, padding in POOL_SHAPES:
      x = jax.random.normal(jax.random.key(0), xs)
      fwd, bwd = {}, {}
      for impl in ("xla", "fast"):
        def f(x, impl=impl):
          return lp.max_pool(x, window, strides, padding, impl=impl)
        fwd[impl] = jax.jit(f)
        bwd[impl] = jax.jit(lambda x, g, f=f: jax.vjp(f, x)[1](g)[0])
      g = jnp.ones(jax.eval_shape(fwd["xla"], x).shape)
      nbytes = 4 * int(np.prod(xs))
      _report(name, (("fwd", fwd, (x,), nbytes), ("bwd", bwd, (x, g), 2 * nbytes)),
              args.repeats)
    return
  if args.dense:
    for name, xs, ws in DENSE_SHAPES:
      x = jax.random.normal(jax.random.key(0), xs)
      w = jax.random.normal(jax.random.key(1), ws) * 0.05
      g = jnp.ones(xs[:-1] + ws[1:])
      scale = jnp.ones(ws[1:])
      fwd, bwd = {}, {}
      for impl in ("xla", "fast"):
        def f(x, w, impl=impl):
          return ld.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), impl=impl)
        fwd[impl] = jax.jit(f)
        bwd[impl] = jax.jit(
            lambda x, w, g, s, f=f: jax.vjp(f, x, w)[1](jnp.maximum(g * s + 1.0, 0.0)))
      macs = int(np.prod(xs)) * ws[1]
      _report(name, (("fwd", fwd, (x, w), 2 * macs), ("bwd", bwd, (x, w, g, scale), 4 * macs)),
              args.repeats)
    return
  for name, xs, ws, s, padding, groups in SHAPES:
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, xs)
    w = jax.random.normal(kw, ws) * 0.05
    fwd, bwd = {}, {}
    for impl in ("xla", "fast"):
      def f(x, w, impl=impl):
        return lc.conv_general_dilated(x, w, (s, s), padding, dimension_numbers=DN,
                                       feature_group_count=groups, impl=impl)
      fwd[impl] = jax.jit(f)
      bwd[impl] = jax.jit(lambda x, w, g, f=f: jax.vjp(f, x, w)[1](g))
    g = jnp.ones(jax.eval_shape(fwd["xla"], x, w).shape)
    out_positions = int(np.prod(g.shape[:3]))
    macs = out_positions * ws[0] * ws[1] * ws[2] * ws[3]
    _report(name, (("fwd", fwd, (x, w), 2 * macs), ("bwd", bwd, (x, w, g), 4 * macs)),
            args.repeats)


def _report(name, passes, repeats):
  """Times each pass's "xla" and "fast" functions in turns; prints one table row per pass."""
  for label, fns, fargs, flops in passes:
    for fn in fns.values():
      _timed(fn, fargs)
    times = {k: [] for k in fns}
    for _ in range(repeats):
      for k, fn in fns.items():
        times[k].append(_timed(fn, fargs))
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"| {name} | {label} | {1e3 * med['xla']:.2f} | {1e3 * med['fast']:.2f} | "
          f"{flops / med['xla'] / 1e9:.1f} | {flops / med['fast'] / 1e9:.1f} | "
          f"{med['xla'] / med['fast']:.2f}x |", flush=True)


if __name__ == "__main__":
  main()
