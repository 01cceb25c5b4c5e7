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
echo "== building cifarops (torch $(python -c 'import torch; print(torch.__version__)'))"
build_log=$(mktemp)
if ! (cd "$ROOT" && MAX_JOBS=${MAX_JOBS:-2} $PIP --no-build-isolation -e .) > "$build_log" 2>&1; then
  cat "$build_log"
  echo "== building cifarops failed" >&2
  exit 1
fi
rm -f "$build_log"
python -c "import cifarops; info = cifarops.build_info(); assert info['loaded'], info; print('== cifarops', cifarops.__version__, info)"
