#!/usr/bin/env bash
# The test command: sets up its own environment (scripts/setup_env.sh), then runs
#   1. the test suite on the reference, C++ CPU (and, on a GPU machine, CUDA and Triton) backends;
#   2. the Triton tests again on the CPU under TRITON_INTERPRET=1, in their own process (Triton reads it at import);
# The CUDA sources include ATen, so their compile check is the whole CUDA extension build against a CUDA
# torch (scripts/check_torch_versions.sh 2.11.0, about 5 GB of venv), which CI runs after this.
# Both runs spread their test files over CIFAROPS_TEST_WORKERS processes (pytest-xdist; default 2, this
# machine's cores; 0 runs in this process). Extra arguments go to both pytest runs. Fails on any failure, and
# when a run collects no test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
workers=(-n "${CIFAROPS_TEST_WORKERS:-2}" --dist loadfile)
echo "== pytest: reference, cpu$(python -c 'import torch; print(", cuda, triton" if torch.cuda.is_available() else "")') backends"
python -m pytest tests -q -p no:cacheprovider "${workers[@]}" "$@"
echo "== pytest: triton backend on the CPU (TRITON_INTERPRET=1)"
TRITON_INTERPRET=1 python -m pytest tests -q -p no:cacheprovider "${workers[@]}" -k "triton and not compile_for_gpus" "$@"
echo "== the CUDA kernels compile with the whole CUDA extension (they include ATen): scripts/check_torch_versions.sh 2.11.0, run by CI (.ci/run)"
