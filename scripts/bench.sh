#!/usr/bin/env bash
# The main job: sets up its own environment (scripts/setup_env.sh), then runs the benchmark report
# (python -m cifarops.bench) on the GPU if there is one, else on the CPU: every op and backend checked, each op
# timed at its CIFAR headline shape, host time per call, a training step of two small networks with and without
# checkpointing, and a summary screen. Arguments go to the report: `--full` (every shape, PyramidNet-272; over two
# hours on a 2-core CPU), `--quick` (CI's), `--help`. Results: bench/out/ (summary.md, benchmark.{csv,md,png},
# hosttime.csv, models.{csv,md}); docs/benchmarks.md says what each holds.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python -m cifarops.bench "$@"
