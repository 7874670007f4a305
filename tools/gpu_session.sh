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
#   OUT=/path/to/results bash tools/gpu_session.sh p     # d and the open benchmarks side
#                                                        # by side: one call of ~530 s
#
# Part p is for a session with one call's worth of device time (15 minutes in all, a machine
# start included): the CIFAR-10 training holds a lock on the GPU (flock, BENCH_GPU_LOCK) for
# TRAIN_SECONDS (default 390) while five benchmark processes (and a kernel check) compile
# beside it (XLA autotuning); each times its rows only while it holds the lock, so every
# timing runs alone on the GPU, after the training. Compile-time autotuning still shares the
# GPU with the training (its timings may pick other algorithms than on an idle GPU). The
# benchmark processes run under `nice` so the training's host thread keeps its core.
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
part=${1:?usage: OUT=DIR bash tools/gpu_session.sh a|b|c|d|p}
out=${OUT:?set OUT to the results folder}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} JAX_COMPILATION_CACHE_DIR=$PWD/.jaxcache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1
py=${PYTHON:-python3}
at="--xla_gpu_autotune_level=2 --xla_gpu_per_fusion_autotune_cache_dir=$PWD/.jaxcache/autotune"
# The DenseNet-BC-100 CIFAR-10 training of parts d and p: the shipped recipe, test accuracy
# every 782 steps (one epoch); resumes from .jaxcache/bc100_c10 when run again.
train=(-m jaxdl.train --config configs/cifar10_densenet_bc100.py --workdir .jaxcache/bc100_c10
       --config.eval_every_steps=782 --config.log_every_steps=391
       --config.checkpoint_every_steps=3910)

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
    XLA_FLAGS=$at run "${TRAIN_SECONDS:-420}" bc100_train $py "${train[@]}"
    cp .jaxcache/bc100_c10/metrics.jsonl "$out/bc100_train_metrics.jsonl"
    ;;
  p)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    export BENCH_GPU_LOCK=/tmp/jaxdl_gpu.lock XLA_PYTHON_CLIENT_PREALLOCATE=false
    export TORCHINDUCTOR_COMPILE_THREADS=4 PYTHONUNBUFFERED=1
    # One call, no later one to reuse a persistent cache (jaxdl.train's own cache off too);
    # writing it costs time (and on the CPU the cache setting made the same compile several
    # times slower here, 2026-12-04; tools/bench_compile_cache.py saw no cost, 2026-12-05).
    unset JAX_COMPILATION_CACHE_DIR JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS
    lvl2=--xla_gpu_autotune_level=2  # no shared autotuning cache: processes run side by side
    secs=${BENCH_SECONDS:-520}
    # The lock on fd 9 of this subshell, inherited by the trainer: free once it has exited.
    (exec 9>"$BENCH_GPU_LOCK"
     flock 9
     XLA_FLAGS=$lvl2 timeout -k 60 "${TRAIN_SECONDS:-390}" $py "${train[@]}" \
       --config.compilation_cache= >"$out/bc100_train.log" 2>&1
     echo "rc $?" >>"$out/bc100_train.log"
     cp .jaxcache/bc100_c10/metrics.jsonl "$out/bc100_train_metrics.jsonl") &
    sleep 2  # the training takes the lock first
    bench() {  # bench NAME XLA_FLAGS ARGS...: one benchmark process in the background
      local name=$1 flags=$2
      shift 2
      (XLA_FLAGS=$flags timeout -k 10 "$secs" nice -n 5 $py tools/bench_gpu.py --repeats 3 \
        --json "$out/$name.json" ${BENCH_EXTRA:-} "$@" >"$out/$name.log" 2>&1
       echo "rc $?" >>"$out/$name.log") &
    }
    # rdnet_tiny's compile time (XLA's pass pipeline logged with timestamps) and step time
    # three ways: as shipped; the one-pass LayerNorm variance and cuDNN's LayerNorm, which
    # cut XLA's priority fusion from 83 s to < 1 s in a deviceless compile (BENCHMARKS.md
    # "RDNet's compile time on GPUs"): does either cost step time?
    TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=hlo_pass_pipeline=1 bench jax_rdnet_tiny_bf16 \
      "$lvl2" --models rdnet_tiny --configs bf16 --skip torch kernels
    TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=hlo_pass_pipeline=1 bench \
      jax_rdnet_tiny_bf16_fastvar "$lvl2" --models rdnet_tiny --configs bf16 \
      --skip torch kernels --model-option norm_fast_variance=true
    TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=hlo_pass_pipeline=1 bench \
      jax_rdnet_tiny_bf16_cudnn_ln "$lvl2" --models rdnet_tiny --configs bf16 \
      --skip torch kernels --xla-option xla_gpu_enable_cudnn_layer_norm=true
    # densenet121 with the Pallas bottleneck kernel (Mosaic GPU) against without it.
    bench jax_densenet121_bf16_kernels "$lvl2" --models densenet121 \
      --configs bf16 bf16+kernels --skip torch kernels
    # config.steps_per_call on the GPU: the CIFAR recipe's batch 64, 1 vs 8 steps per call.
    bench jax_bc100_steps_per_call "$lvl2" --models densenet_bc_100_k12 --configs bf16 \
      --cifar-batch 64 --steps 16 --steps-per-call 8 --skip torch kernels
    # The Mosaic GPU prototype-distance kernel against XLA (correctness; seconds).
    (timeout -k 10 "$secs" nice -n 5 $py tools/gpu_check.py --kernels prototype \
       >"$out/check_prototype.log" 2>&1; echo "rc $?" >>"$out/check_prototype.log") &
    wait
    for f in "$out"/*.log; do echo "== $f"; grep -v "^[IWE][0-9]\{4\} " "$f" | tail -n 8; done
    ;;
  *)
    echo "unknown part '$part': use a, b, c, d or p" >&2
    exit 2
    ;;
esac
