#!/usr/bin/env bash
# Builds the whole CUDA extension (kernels and torch bindings) on a machine without a GPU, against the CUDA
# build of torch 2.14.1 in its own venv, then imports it and checks that every op has a CUDA kernel.
# CUDA cannot run here; this proves the binding code compiles and links before a GPU ever sees it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(realpath -m "${CIFAROPS_CUDA_VENV:-.venv-cuda}")
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check torch==2.14.1 ninja numpy setuptools wheel
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "== building cifarops._C with CUDA against $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
rm -rf build-cuda
CUDA_HOME=$CUDA_HOME PATH=$CUDA_HOME/bin:$PATH CPATH=$SITE/nvidia/cu13/include FORCE_CUDA=1 \
  TORCH_CUDA_ARCH_LIST="8.0;9.0" MAX_JOBS=2 \
  "$VENV/bin/python" setup.py -q build --build-base build-cuda
LIB=$(ls -d build-cuda/lib.*)
echo "== importing the CUDA build from $LIB"
cd "$LIB"
"$VENV/bin/python" - <<'PY'
import torch
import cifarops

info = cifarops.build_info()
assert info["loaded"] and info["cuda"], info
print("build_info:", info)
missing = []
for name in torch._C._dispatch_get_all_op_names():
    composite = torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeImplicitAutograd")  # pure PyTorch
    if name.startswith("cifarops::") and not composite and not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"):
        missing.append(name)
ops = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("cifarops::")]
assert ops, "no cifarops ops registered"
assert not missing, f"ops without a CUDA kernel: {missing}"
print(f"CUDA kernels registered for all {len(ops)} ops: {sorted(ops)}")
PY
