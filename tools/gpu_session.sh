#!/usr/bin/env bash
# The GPU measurements that remain (BENCHMARKS.md "GPU measurements that remain"), cut into
# parts that each fit one 600 s call of a lent GPU machine, so a session with device time can
# spend it on measuring rather than on planning:
#
#   OUT=/path/to/results bash tools/gpu_session.sh a     # kernels, densenet121 f32 / +kernels
#   OUT=/path/to/results bash tools/gpu_session.sh b     # rdnet_tiny (jaxdl), autotuning off
#   OUT=/path/to/results bash tools/gpu_session.sh c     # densenet_bc_100_k12, torch.compile
#
# Every command has its own `timeout`, so a part that overruns still returns the logs and
# JSON rows written so far (tools/bench_gpu.py writes its JSON after every row). The XLA
# compilation cache lives in .jaxcache/ (git-ignored): calls made while the machine is still
# warm reuse it. Run from the repository root; needs jax with CUDA, and torch + timm for the
# PyTorch rows (the lent machines' image has both).
set -u
part=${1:?usage: OUT=DIR bash tools/gpu_session.sh a|b|c}
out=${OUT:?set OUT to the results folder}
mkdir -p "$out"
export PYTHONPATH=. JAX_COMPILATION_CACHE_DIR=$PWD/.jaxcache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1
py=${PYTHON:-python3}

run() {  # run LIMIT NAME CMD...: one measurement, its log under $out, never the whole part.
  local limit=$1 name=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "   rc $? after $((SECONDS - t0)) s"
  tail -n 12 "$out/$name.log"
}

case $part in
  a)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    run 120 check $py tools/gpu_check.py
    run 120 kernels $py tools/bench_gpu.py --skip jax torch --json "$out/kernels.json"
    XLA_FLAGS=--xla_gpu_autotune_level=2 run 300 densenet121 $py tools/bench_gpu.py \
      --models densenet121 --configs f32 bf16+kernels --skip torch kernels \
      --json "$out/densenet121.json"
    ;;
  b)
    # rdnet_tiny did not compile in 320 s at autotune level 2; level 0 uses cuDNN's
    # heuristics instead of timing every convolution (the compile time goes in the row).
    XLA_FLAGS=--xla_gpu_autotune_level=0 run 540 rdnet_tiny $py tools/bench_gpu.py \
      --models rdnet_tiny --configs bf16 f32 --skip torch kernels --json "$out/rdnet_tiny.json"
    ;;
  c)
    XLA_FLAGS=--xla_gpu_autotune_level=0 run 240 bc100 $py tools/bench_gpu.py \
      --models densenet_bc_100_k12 --configs bf16 f32 --skip torch kernels \
      --json "$out/bc100.json"
    XLA_PYTHON_CLIENT_PREALLOCATE=false run 300 torch_compile $py tools/bench_gpu.py \
      --skip jax kernels --models densenet121 resnet50 densenet_bc_100_k12 \
      --torch-configs compile_bf16 --json "$out/torch_compile.json"
    ;;
  *)
    echo "unknown part '$part': use a, b or c" >&2
    exit 2
    ;;
esac
