#!/usr/bin/env bash
# The GPU measurements that remain (BENCHMARKS.md "GPU measurements that remain"), cut into
# parts that each fit one 600 s call of a lent GPU machine, so a session with device time can
# spend it on measuring rather than on planning:
#
#   OUT=/path/to/results bash tools/gpu_session.sh a     # kernels, densenet121 f32 / +kernels
#   OUT=/path/to/results bash tools/gpu_session.sh b     # rdnet_tiny (jaxdl) bf16
#   OUT=/path/to/results bash tools/gpu_session.sh c     # timm torch.compile rows
#   OUT=/path/to/results bash tools/gpu_session.sh d     # DenseNet-BC-100 CIFAR-10 training
#                                                        # for TRAIN_SECONDS (default 420)
#
# Every command has its own `timeout`, so a part that overruns still returns the logs and
# JSON rows written so far (tools/bench_gpu.py writes its JSON after every row). The XLA
# compilation cache and XLA's per-fusion autotuning cache live in .jaxcache/ (git-ignored):
# calls made while the machine is still warm reuse them, so a compile cut off by a timeout
# should resume with the convolutions already timed. Never autotune level 0 (cuDNN's and
# cuBLAS's first choice, no timing): on the H200 it made the DenseNet-BC-100 train step 28x
# slower than level 2 and an 8192^3 bf16 matmul 6x slower (BENCHMARKS.md, 2026-12-04).
# Run from the repository root; needs jax with CUDA, and torch + timm for the PyTorch rows
# (the lent machines' image has both). Part d also needs what that image lacks, carried as
# git-ignored folders (add `/.whl/` and `/.gpudata/` to .git/info/exclude, name both in
# `carry`):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl ml_collections tensorboardX
#   mkdir -p .gpudata/cifar10 && cp ../shared/data/cifar10/*.tar.gz .gpudata/cifar10/
# and the call's command begins with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   export PYTHONPATH=/tmp/site JAXDL_DATA_DIR=$PWD/.gpudata PYTHONUNBUFFERED=1;
set -u
part=${1:?usage: OUT=DIR bash tools/gpu_session.sh a|b|c|d}
out=${OUT:?set OUT to the results folder}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} JAX_COMPILATION_CACHE_DIR=$PWD/.jaxcache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1
py=${PYTHON:-python3}
at="--xla_gpu_autotune_level=2 --xla_gpu_per_fusion_autotune_cache_dir=$PWD/.jaxcache/autotune"

run() {  # run LIMIT NAME CMD...: one measurement, its log under $out, never the whole part.
  local limit=$1 name=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout -k 60 "$limit" "$@" >"$out/$name.log" 2>&1
  echo "   rc $? after $((SECONDS - t0)) s"
  tail -n 12 "$out/$name.log"
}

case $part in
  a)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    run 120 check $py tools/gpu_check.py
    run 120 kernels $py tools/bench_gpu.py --skip jax torch --json "$out/kernels.json"
    XLA_FLAGS=$at run 300 densenet121 $py tools/bench_gpu.py \
      --models densenet121 --configs f32 bf16+kernels --skip torch kernels \
      --json "$out/densenet121.json"
    ;;
  b)
    # rdnet_tiny did not compile in 320 s at autotune level 2 on the H100 (254 convolutions,
    # 213 distinct); a second call on the warm machine reuses the autotuning cache.
    XLA_FLAGS=$at run 560 rdnet_tiny $py tools/bench_gpu.py \
      --models rdnet_tiny --configs bf16 --skip torch kernels --json "$out/rdnet_tiny.json"
    ;;
  c)
    # densenet_bc_100_k12's torch.compile did not finish compiling in 100 s on the H200.
    XLA_PYTHON_CLIENT_PREALLOCATE=false run 560 torch_compile $py tools/bench_gpu.py \
      --skip jax kernels --models densenet_bc_100_k12 resnet50 densenet121 \
      --torch-configs compile_bf16 --json "$out/torch_compile.json"
    ;;
  d)
    # The shipped CIFAR-10 recipe (configs/cifar10_densenet_bc100.py: batch 64, lr 0.1, ...)
    # for as long as the part allows, test accuracy every 782 steps (one epoch); the run
    # stops on SIGTERM with a checkpoint, and the same command on a warm machine resumes it.
    # Needs the CIFAR-10 tarballs under $JAXDL_DATA_DIR (../shared/data does not travel to a
    # lent machine: carry a copy) and ml_collections + tensorboardX importable (carry wheels).
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    XLA_FLAGS=$at run "${TRAIN_SECONDS:-420}" bc100_train $py \
      -m jaxdl.train --config configs/cifar10_densenet_bc100.py --workdir .jaxcache/bc100_c10 \
      --config.eval_every_steps=782 --config.log_every_steps=391 \
      --config.checkpoint_every_steps=3910
    cp .jaxcache/bc100_c10/metrics.jsonl "$out/bc100_train_metrics.jsonl"
    ;;
  *)
    echo "unknown part '$part': use a, b, c or d" >&2
    exit 2
    ;;
esac
