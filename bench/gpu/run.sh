#!/usr/bin/env bash
# Runs on the GPU machine, in the repository root, with .gpu/ from bench/gpu/prepare.sh: the
# GPU tests on the GPU's own kernels, attnc's GPU benchmark, flash-linear-attention and
# FlashAttention on the same GPU, then the tests and the benchmark again on the kernels of the
# other shared-memory classes (CudaDevice::targeting). Each step has a time limit, so the whole
# stays under about 9 minutes; results go to $OUT (at most 8 files come back):
#   gpu.txt (nvidia-smi, NVRTC), tests.log, bench.md, baselines.md.
set -u
cd "$(dirname "$0")/../.."
out="${OUT:-gpu-out}"
mkdir -p "$out"
bin=.gpu/bin
export ATTNC_REQUIRE_CUDA=1 RUST_BACKTRACE=1 PYTHONUNBUFFERED=1

{ nvidia-smi; echo; } > "$out/gpu.txt" 2>&1

# cudarc (built for CUDA 12) loads libnvrtc.so or libnvrtc.so.12: point the first name at the
# NVRTC there (CUDA 13's, from the toolkit or PyTorch's wheels).
nvrtc=$( (ls /usr/local/cuda*/lib64/libnvrtc.so.* /usr/local/cuda*/targets/*/lib/libnvrtc.so.* \
  "$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null)"/nvidia/*/lib/libnvrtc.so.* \
  2>/dev/null || true) | grep -v builtins | head -n 1)
if [ -n "$nvrtc" ]; then
  mkdir -p /tmp/attnc-nvrtc && ln -sf "$nvrtc" /tmp/attnc-nvrtc/libnvrtc.so
  export LD_LIBRARY_PATH="/tmp/attnc-nvrtc:$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
echo "NVRTC: ${nvrtc:-none found}" >> "$out/gpu.txt"

step() { # step LIMIT_S LOG TITLE COMMAND...
  local limit=$1 log=$2 title=$3; shift 3
  echo "== $title ($(date -u +%T))" | tee -a "$log"
  timeout "$limit" "$@" >> "$log" 2>&1
  echo "-- exit $? after ${SECONDS}s in all" | tee -a "$log"
}

step 180 "$out/tests.log" "cuda_gpu, the GPU's own kernels" "$bin/cuda_gpu" --test-threads 4 --nocapture
step 120 "$out/bench.md" "attnc-bench --gpu" "$bin/attnc-bench" --gpu --out /tmp/attnc-bench
if python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl; then
  step 90 "$out/baselines.md" "gpu_baselines.py" env PYTHONPATH=/tmp/site python3 bench/gpu_baselines.py
fi
for arch in sm_80 sm_86 sm_75; do
  step 60 "$out/tests.log" "cuda_gpu as $arch" env ATTNC_TEST_ARCH=$arch "$bin/cuda_gpu" --test-threads 4 --nocapture
done
step 60 "$out/bench.md" "attnc-bench --gpu --arch sm_80" "$bin/attnc-bench" --gpu --arch sm_80 --out /tmp/attnc-bench-80
