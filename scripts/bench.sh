#!/usr/bin/env bash
# The main job: sets up its own environment (scripts/setup_env.sh), then runs, on the GPU if there is one,
# else on the CPU:
#   1. the op benchmark report (python -m cifarops.bench); arguments go to it, e.g. `--quick`;
#   2. the model benchmark (python -m cifarops.bench.models): PyramidNet-272 a=200 training steps, cifarops
#      vs reference layers, each checkpoint mode, peak memory (batch 128 on a GPU, 8 on the CPU); with
#      --quick, a short run of PyramidNet-110 at batch 4 instead.
# Results: the terminal tables, bench/out/benchmark.{csv,md} and bench/out/models.{csv,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python -m cifarops.bench "$@"
models_args=()
for arg in "$@"; do
  if [ "$arg" = "--quick" ]; then
    models_args=(--models pyramidnet110-a270-shakedrop --batch 4 --steps 1)
  fi
done
python -m cifarops.bench.models "${models_args[@]}"
