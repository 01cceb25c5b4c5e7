#!/usr/bin/env bash
# The main job: sets up its own environment (scripts/setup_env.sh), then runs the benchmark report
# (python -m cifarops.bench) on the GPU if there is one, else on the CPU: every op and backend checked and
# timed, then the model level (training steps of PyramidNet-272, cifarops vs reference layers, each
# checkpoint mode, peak memory). Arguments go to the report, e.g. `bash scripts/bench.sh --quick`.
# Results: the terminal tables, bench/out/benchmark.{csv,md,png} and bench/out/models.{csv,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python -m cifarops.bench "$@"
