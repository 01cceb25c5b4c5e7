#!/usr/bin/env bash
# The main job: sets up its own environment (scripts/setup_env.sh), then runs the benchmark report
# (python -m cifarops.bench) on the GPU if there is one, else on the CPU. Arguments go to the report,
# e.g. `bash scripts/bench.sh --quick`. Results: the terminal table, bench/out/benchmark.csv and .md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python -m cifarops.bench "$@"
