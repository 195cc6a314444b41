#!/usr/bin/env bash
# Prepares a GPU session on a machine without a GPU: builds what bench/gpu/run.sh runs on the
# GPU machine (which has CUDA, PyTorch and Triton but no Rust toolchain) into .gpu/ (ignored by
# git), stripped, with flash-linear-attention's wheel for the baselines:
#
#   bench/gpu/prepare.sh                       # here
#   bash bench/gpu/run.sh                      # there, with .gpu carried along; results in $OUT
#
# The binaries link only glibc (build them on a glibc no newer than the GPU machine's) and load
# libcuda and NVRTC at run time.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=.gpu
rm -rf "$dest" && mkdir -p "$dest/bin" "$dest/whl"

echo "== the GPU tests (tests/cuda_gpu.rs), test profile" >&2
test_bin=$(cargo test --test cuda_gpu --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_gpu":
        print(m["executable"])')
[ -x "$test_bin" ] || { echo "prepare: no cuda_gpu test binary" >&2; exit 1; }
cp "$test_bin" "$dest/bin/cuda_gpu"

echo "== the benchmark (attnc-bench --gpu), release" >&2
cargo build --release -p attnc-bench >&2
cp target/release/attnc-bench "$dest/bin/attnc-bench"
strip "$dest"/bin/*

echo "== flash-linear-attention's wheel (pure Python; torch, triton and einops are there)" >&2
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  -d "$dest/whl" fla-core >&2

du -sh "$dest" >&2
echo "prepare: carry .gpu (under the 64 MiB a device call takes)" >&2
