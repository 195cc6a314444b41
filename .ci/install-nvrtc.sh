#!/usr/bin/env bash
# Installs NVRTC (CUDA's runtime compiler, no GPU needed) from PyPI's nvidia-cuda-nvrtc-cu12
# wheel into target/nvrtc and prints the folder holding libnvrtc.so.12, for LD_LIBRARY_PATH.
# Messages go to stderr; stdout is only the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="target/nvrtc"
lib="$dest/nvidia/cuda_nvrtc/lib"
if [ ! -e "$lib/libnvrtc.so.12" ]; then
  mkdir -p "$dest"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$dest" "nvidia-cuda-nvrtc-cu12>=12.4,<13" >&2
fi
if [ ! -e "$lib/libnvrtc.so.12" ]; then
  echo "install-nvrtc: libnvrtc.so.12 not found under $dest after installing the wheel" >&2
  exit 1
fi
cd "$lib" && pwd
