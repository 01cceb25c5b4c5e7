#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (torch 2.11+cu130, triton, nvcc, no network): builds the CUDA
# extension for this GPU, runs the whole test suite on it, compute-sanitizer over every CUDA kernel, every op
# past 2^31 elements (scripts/gpu_large_index.py), the op benchmark report and the model benchmark
# (PyramidNet-272, batch 128, bf16 autocast, channels_last, every checkpoint mode). Everything lands under $OUT (default: gpu_out/). Meant to finish in well under ten minutes.
#   device run: bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
status=0
step() { echo; echo "==== $*"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"

step "build with CUDA"
arch=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
export TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=16
if ! python -m pip install -q --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1; then
  # No network there: if pip lacks a build tool, build with setuptools directly and import from the build.
  python setup.py -q build --build-base /tmp/cifarops-build >> "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
  export PYTHONPATH=$(ls -d /tmp/cifarops-build/lib.*)${PYTHONPATH:+:$PYTHONPATH}
fi
python -c "import cifarops; print(cifarops.build_info()); print(cifarops.available_backends('cuda'))" | tee -a "$OUT/device.txt"

step "tests on the GPU (cpu, cuda, triton backends)"
python -m pytest tests -q -p no:cacheprovider -x 2>&1 | tee "$OUT/tests.log" | tail -15
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "compute-sanitizer memcheck and racecheck over every CUDA kernel"
# Every CUDA kernel, forward and backward, each dtype and layout (vectorised and not), kept small: the
# sanitizers slow kernels down a hundredfold.
subset="cuda-cuda and (known_answer or dtypes_layouts or layouts_match or graham_modes)"
for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --error-exitcode 9 python -m pytest tests -q -p no:cacheprovider \
    -k "$subset" > "$OUT/sanitizer-$tool.log" 2>&1
  rc=$?
  echo "$tool: exit $rc, $(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/sanitizer-$tool.log") clean summaries"
  [ "$rc" -eq 0 ] || status=1
done

step "indexing past 2^31 elements: every op on cuda and triton, forward and backward"
python scripts/gpu_large_index.py 2>&1 | tee "$OUT/large_index.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "benchmark report"
python -m cifarops.bench --models none --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -60
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "model benchmark: PyramidNet-272 a=200, batch 128, bf16 autocast, channels_last, each checkpoint mode"
python -m cifarops.bench.models --models pyramidnet272-a200-shakedrop --batch 128 --autocast --channels-last \
  --steps 5 --out "$OUT" 2>&1 | tee "$OUT/models.log" | tail -20
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo; echo "==== gpu_check finished with status $status"
exit $status
