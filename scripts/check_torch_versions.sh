#!/usr/bin/env bash
# Proves cifarops against each torch version given (default: every minor release pyproject.toml claims, at the
# newest patch these registries serve), each in its own venv (.venv-torch-VERSION, kept for the next run):
#   1. installs that torch with its own triton (the CPU build for 2.13.0, which lies on this machine's disk; a
#      CUDA build from PyPI for the others, about 5 GB of venv each) and the test tools;
#   2. builds cifarops against it into build-torch-VERSION/, with the CUDA kernels where torch is a CUDA build
#      (sm_80 and sm_90+PTX, nvcc from CUDA_HOME; no GPU is needed to compile);
#   3. runs the smoke subset, `pytest -m smoke` (tests/conftest.py SMOKE), on CPU tensors: the build and op
#      registry (a CUDA kernel for every op in a CUDA build), every op against the reference, gradcheck,
#      opcheck, the C++ autograd nodes, torch.compile of one op, the Triton kernels compiled to cubin by that
#      triton for sm_80 and sm_90 with no local memory.
# CI runs `bash scripts/check_torch_versions.sh 2.11.0`: the GPU machines' torch (2.11.0+cu130, triton 3.6.0).
# A release runs it with no argument. Prints each version's result and time; fails if any version fails.
# --venv-only: make (or update) the venvs and stop (CI makes 2.11.0's in the background while its tests run).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV_ONLY=0
if [ "${1:-}" = "--venv-only" ]; then VENV_ONLY=1; shift; fi
VERSIONS=("$@")
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(2.11.0 2.12.0 2.13.0 2.14.1)
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH=$CUDA_HOME/bin:$PATH

check_version() {  # VERSION: set up, build, smoke-test; returns non-zero on the first failure
  local version=$1
  local venv=$PWD/.venv-torch-$version build=build-torch-$version step=$SECONDS
  local pip="$venv/bin/python -m pip install -q --disable-pip-version-check"
  if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv" || return 1; fi
  $pip "torch==$version" ninja numpy setuptools wheel pytest pytest-xdist hypothesis expecttest || return 1
  # The CPU wheel brings no triton; the CUDA wheels pin their own.
  "$venv/bin/python" -c "import triton" 2>/dev/null || $pip "triton<3.10" || return 1
  echo "== venv ready in $((SECONDS - step)) s"; step=$SECONDS
  [ "$VENV_ONLY" = 0 ] || return 0
  local site cuda
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
  cuda=$("$venv/bin/python" -c 'import torch; print(int(torch.version.cuda is not None))') || return 1
  echo "== torch $("$venv/bin/python" -c 'import torch, triton; print(torch.__version__, "triton", triton.__version__)'), building into $build ($([ "$cuda" = 1 ] && echo "with" || echo "without") CUDA kernels)"
  rm -rf "$build" && mkdir -p "$build"
  # CPATH: a CUDA wheel's own CUDA headers (cuSPARSE, cuBLAS, ...), which ATen's CUDA headers include.
  if ! CPATH=$site/nvidia/cu13/include MAX_JOBS=${MAX_JOBS:-2} CIFAROPS_CUDA=$cuda \
      "$venv/bin/python" setup.py -q build --build-base "$build" > "$build/build.log" 2>&1; then
    tail -50 "$build/build.log"
    echo "== building against torch $version failed (whole log: $build/build.log)" >&2
    return 1
  fi
  echo "== built in $((SECONDS - step)) s"; step=$SECONDS
  local lib
  lib=$(ls -d "$PWD/$build"/lib.*) || return 1
  echo "== pytest -m smoke against torch $version ($lib)"
  # Run from the tests, with the built package first on the path (never the repository's editable install).
  # A run that collects no test exits 5, and fails here like any other failure.
  # Two pytest-xdist workers by default, as scripts/test.sh (CIFAROPS_TEST_WORKERS=0: this process), test by
  # test: the subset's long poles are test_build's two Triton compiles (sm_80, sm_90), one for each worker.
  PYTHONPATH=$lib CIFAROPS_EXPECT_CUDA=$cuda "$venv/bin/python" -m pytest tests -m smoke -q -p no:cacheprovider \
    -n "${CIFAROPS_TEST_WORKERS:-2}" --dist load
}

declare -A RESULT SECONDS_TAKEN
status=0
for version in "${VERSIONS[@]}"; do
  start=$SECONDS
  echo "==== torch $version"
  if check_version "$version"; then RESULT[$version]=$([ "$VENV_ONLY" = 1 ] && echo "venv made" || echo passed)
  else RESULT[$version]=FAILED; status=1; fi
  SECONDS_TAKEN[$version]=$((SECONDS - start))
done
echo "==== torch versions"
for version in "${VERSIONS[@]}"; do
  echo "torch $version: ${RESULT[$version]} in ${SECONDS_TAKEN[$version]} s"
done
exit $status
