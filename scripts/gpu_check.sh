#!/usr/bin/env bash
# The prepared run for a lent GPU machine (torch 2.11+cu130, triton, nvcc, compute-sanitizer, no network), in
# parts that each finish within 8 minutes on one H200, so that 15 minutes of device time cover them all. A lent
# machine goes back after 30 s idle and the next call gets a bare one, so every part builds the extension
# first when it is not built yet (about 2 minutes: this GPU's architecture only, 16 jobs).
#   bash scripts/gpu_check.sh build       build, device facts, a smoke test of every op on cuda and triton
#   bash scripts/gpu_check.sh tests       the whole test suite on the GPU (cpu, cuda, triton backends)
#   bash scripts/gpu_check.sh sanitizers  compute-sanitizer memcheck and racecheck over a subset that launches
#                                         every CUDA kernel; every op past 2^31 elements
#   bash scripts/gpu_check.sh bench       the op benchmark report and the PyramidNet-272 model benchmark
#   bash scripts/gpu_check.sh all         the four in turn (about 25 minutes: more than one session's device time)
# Results go under $OUT (default gpu_out/), one log per step; the last line says the part's status.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
PART=${1:-build}
LIMIT=${GPU_CHECK_STEP_LIMIT:-420}  # seconds for one step, so that a part's results come back within 8 minutes
mkdir -p "$OUT"
status=0
step() { echo; echo "==== $*"; }
# run NAME CMD...: CMD under the step limit, its output in $OUT/NAME.log, the tail shown.
run() {
  local name=$1; shift
  timeout "$LIMIT" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -25 "$OUT/$name.log"
  echo "[$name: exit $rc]"
  [ "$rc" -eq 0 ] || status=1
}

build() {
  if python -c "import cifarops, sys; sys.exit(0 if cifarops.build_info().get('cuda') else 1)" 2> /dev/null; then
    return 0
  fi
  step "build with CUDA for this GPU"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
  local arch
  arch=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=16
  local start=$SECONDS
  # No network there: --no-index; without pip's build tools, build in place with setuptools.
  if ! python -m pip install -q --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1; then
    python setup.py -q build_ext --inplace >> "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
    export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
  fi
  echo "built in $((SECONDS - start)) s" | tee -a "$OUT/device.txt"
  python -c "import cifarops; print(cifarops.build_info()); print(cifarops.available_backends('cuda'))" | tee -a "$OUT/device.txt"
}

part_build() {
  step "smoke: every op on cuda and triton, its kernel count, CUDA graphs, the build checks"
  run smoke python -m pytest -q -p no:cacheprovider tests/test_build.py tests/test_kernel_count.py \
    tests/test_cuda_graphs.py tests/test_host_sync.py tests/test_autograd_nodes.py
}

part_tests() {
  step "tests on the GPU (cpu, cuda, triton backends)"
  run tests python -m pytest tests -q -p no:cacheprovider -x --durations=15
}

part_sanitizers() {
  step "compute-sanitizer memcheck and racecheck over every CUDA kernel"
  # Every CUDA kernel, forward and backward, each dtype and layout (vectorised and not), kept small: the
  # sanitizers slow kernels down a hundredfold.
  local subset="cuda-cuda and (known_answer or dtypes_layouts or layouts_match or graham_modes)"
  for tool in memcheck racecheck; do
    run "sanitizer-$tool" compute-sanitizer --tool "$tool" --error-exitcode 9 python -m pytest tests -q \
      -p no:cacheprovider -k "$subset"
    echo "$tool: $(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/sanitizer-$tool.log") clean summaries"
  done
  step "indexing past 2^31 elements: every op on cuda and triton, forward and backward"
  run large_index python scripts/gpu_large_index.py
}

part_bench() {
  step "the main job as a user runs it (the default report; its target is 4 minutes on one H100/H200)"
  run bench-default python -m cifarops.bench --out "$OUT/default"
  step "benchmark report, every shape (--full, no model level: the next step is the GPU's)"
  run bench python -m cifarops.bench --full --models none --out "$OUT"
  step "model benchmark: PyramidNet-272 a=200, batch 128, bf16 autocast, channels_last, each checkpoint mode"
  run models python -m cifarops.bench.models --models pyramidnet272-a200-shakedrop --batch 128 --autocast \
    --channels-last --steps 5 --out "$OUT"
}

# Before any device time goes into a build: torch and triton must be versions the proven range covers.
python scripts/check_versions.py | tee "$OUT/versions.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "==== gpu_check $PART stopped: torch or triton outside the proven range"; exit 2; }

case "$PART" in
  build | tests | sanitizers | bench) build; "part_$PART" ;;
  all) build; for p in build tests sanitizers bench; do "part_$p"; done ;;
  *) echo "usage: bash scripts/gpu_check.sh [build|tests|sanitizers|bench|all]" >&2; exit 2 ;;
esac
echo; echo "==== gpu_check $PART finished with status $status"
exit $status
