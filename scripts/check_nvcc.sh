#!/usr/bin/env bash
# Compiles every csrc/cuda/*.cu with plain nvcc (no torch) for the architectures we ship, with the same
# half/bfloat16 restrictions torch's extension build applies, so a compile error never waits for a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count=0
for cu in csrc/cuda/*.cu; do
  echo "nvcc: $cu (sm_80, sm_90)"
  "$NVCC" -std=c++17 -O3 -Icsrc/include -Xcompiler -Wall \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
    -D__CUDA_NO_HALF2_OPERATORS__ \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -c "$cu" -o "$out/$(basename "$cu").o"
  count=$((count + 1))
done
[ "$count" -gt 0 ] || { echo "no .cu files found" >&2; exit 1; }
echo "nvcc: compiled $count CUDA source files"
