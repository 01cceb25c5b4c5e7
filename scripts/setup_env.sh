# Sourced by scripts/test.sh and scripts/bench.sh: makes (once) and activates the virtual environment, with
# torch, triton and the test tools, and installs cifarops into it in editable mode.
# On a machine whose Python already has torch (the GPU machines), the venv sees it and installs no other.
# CIFAROPS_VENV chooses the venv's folder (default: .venv in the repository).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${CIFAROPS_VENV:-$ROOT/.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  python3 -m venv --system-site-packages "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
PIP="python -m pip install -q --disable-pip-version-check"
if ! python -c "import torch" 2>/dev/null; then
  echo "== installing torch 2.13.0 (CPU build)"
  $PIP torch==2.13.0
fi
missing=$(python - <<'PY'
import importlib.util
need = {"triton": "triton<3.10", "pytest": "pytest", "pytest_benchmark": "pytest-benchmark", "xdist": "pytest-xdist", "hypothesis": "hypothesis",
        "expecttest": "expecttest", "numpy": "numpy", "sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm", "tensorboard": "tensorboard", "ninja": "ninja", "setuptools": "setuptools>=64", "wheel": "wheel"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PY
)
if [ -n "$missing" ]; then
  echo "== installing $missing"
  $PIP $missing
fi
# The build is skipped when nothing it reads changed since this venv's last one (the C++/CUDA sources, the build
# files, torch's version and the build switches): pip rebuilds every object each time, two minutes here.
stamp_file=$VENV/.cifarops-build-stamp
stamp=$(cd "$ROOT" && python - <<'PY'
import hashlib, os, pathlib, torch
digest = hashlib.sha256(torch.__version__.encode())
for key in ("CIFAROPS_CUDA", "FORCE_CUDA", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME"):
    digest.update(f"{key}={os.environ.get(key)}".encode())
for path in sorted([*pathlib.Path("csrc").rglob("*"), pathlib.Path("setup.py"), pathlib.Path("pyproject.toml")]):
    if path.is_file():
        digest.update(str(path).encode() + path.read_bytes())
print(digest.hexdigest())
PY
)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] && ls "$ROOT"/python/cifarops/_C*.so > /dev/null 2>&1; then
  echo "== cifarops build up to date (no source or switch changed since the last)"
else
  echo "== building cifarops (torch $(python -c 'import torch; print(torch.__version__)'))"
  build_log=$(mktemp)
  rm -f "$stamp_file"
  if ! (cd "$ROOT" && MAX_JOBS=${MAX_JOBS:-2} $PIP --no-build-isolation -e .) > "$build_log" 2>&1; then
    cat "$build_log"
    echo "== building cifarops failed" >&2
    exit 1
  fi
  rm -f "$build_log"
  echo "$stamp" > "$stamp_file"
fi
python -c "import cifarops; info = cifarops.build_info(); assert info['loaded'], info; print('== cifarops', cifarops.__version__, info)"
