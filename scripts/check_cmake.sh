#!/usr/bin/env bash
# Builds the op library against LibTorch with CMake (the torch of the active Python), and runs the C++
# test program that calls the ops through the dispatcher (ctest).
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')
rm -rf build-cmake
cmake -S . -B build-cmake -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_BUILD_TYPE=Release
cmake --build build-cmake -j2
ctest --test-dir build-cmake --output-on-failure --no-tests=error
