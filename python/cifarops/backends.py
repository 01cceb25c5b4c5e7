"""Which implementation runs an op: `reference`, `cpu`, `cuda` or `triton`.

- `reference`: pure PyTorch (python/cifarops/reference/, one module per op); always available, the test oracle.
- `cpu`: the C++ kernels of cifarops._C, for CPU tensors.
- `cuda`: the CUDA kernels of cifarops._C, for CUDA tensors (when built with CUDA).
- `triton`: the Triton kernels, for CUDA tensors; on CPU tensors only under TRITON_INTERPRET=1.

By default the fastest available backend for the tensor's device is used. Override with the
`use_backend(name)` context manager or the CIFAROPS_BACKEND environment variable (read at import).
That override is process-wide. A layer's own ``backend=`` pin (`pinned`) is per thread and wins over it:
two threads running layers pinned to different backends must not see each other's pins.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from typing import Iterator

import torch

from cifarops import _extension

BACKENDS = ("reference", "cpu", "cuda", "triton")

_override: str | None = None
# Layer pins: per thread, with a module-global count of active pins, so that the usual case (no pinned layer
# running) costs one comparison and code traced by torch.compile reads a global.
_pins = threading.local()
_active_pins = 0
_pins_lock = threading.Lock()
_ENV_OVERRIDE = os.environ.get("CIFAROPS_BACKEND") or None


def check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"cifarops: unknown backend {name!r}; expected one of {BACKENDS}")
    return name


if _ENV_OVERRIDE is not None:
    check_name(_ENV_OVERRIDE)


# Read once at import (as Triton itself does), so that code traced by torch.compile only reads constants.
TRITON_IMPORTABLE = importlib.util.find_spec("triton") is not None
TRITON_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # Triton kernels run on CPU tensors


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run ops on tensors of `device` (the reference always can)."""
    device = torch.device(device)
    found = ["reference"]
    info = _extension.BUILD_INFO
    if device.type == "cpu" and info["loaded"]:
        found.append("cpu")
    if device.type == "cuda" and info["cuda"]:
        found.append("cuda")
    if TRITON_IMPORTABLE and (device.type == "cuda" or (device.type == "cpu" and TRITON_INTERPRETED)):
        found.append("triton")
    return found


def default_backend(device: torch.device | str) -> str:
    """The automatic choice: compiled kernels, then Triton (on a GPU), then the reference."""
    found = available_backends(device)
    for name in ("cuda", "cpu"):
        if name in found:
            return name
    if "triton" in found and torch.device(device).type == "cuda":
        return "triton"
    return "reference"


def current_override() -> str | None:
    """The backend requested for this thread: its innermost layer pin, else `use_backend`'s, else
    CIFAROPS_BACKEND's; None for the automatic choice."""
    if _active_pins:
        stack = getattr(_pins, "stack", None)
        if stack:
            return stack[-1]
    return _override if _override is not None else _ENV_OVERRIDE


def select_backend(device: torch.device | str) -> str:
    """The backend to use for tensors on `device`: the override if one is set, else the default."""
    name = current_override()
    if name is None:
        return default_backend(device)
    if name not in available_backends(device):
        raise RuntimeError(
            f"cifarops: backend {name!r} was requested but is not available for {torch.device(device)} tensors; "
            f"available: {available_backends(device)}"
        )
    return name


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Run cifarops ops inside the block on backend `name`; None means no override inside the block (then
    CIFAROPS_BACKEND, if set, or the automatic choice applies)."""
    global _override
    if name is not None:
        check_name(name)
    previous = _override
    _override = name
    try:
        yield
    finally:
        _override = previous


@contextlib.contextmanager
def pinned(name: str) -> Iterator[None]:
    """Run cifarops ops inside the block on backend `name`, in this thread only (a layer's ``backend=``)."""
    global _active_pins
    check_name(name)
    if torch.compiler.is_compiling():
        # Dynamo traces neither locks nor thread-locals; the traced graph bakes in the backend chosen here.
        with use_backend(name):
            yield
        return
    stack = getattr(_pins, "stack", None)
    if stack is None:
        stack = _pins.stack = []
    stack.append(name)
    with _pins_lock:
        _active_pins += 1
    try:
        yield
    finally:
        with _pins_lock:
            _active_pins -= 1
        stack.pop()


# Op lookup, cached: a call costs a dict read when no override or pin is active (the usual case), instead of
# listing backends and building names on every call.
_op_cache: dict[tuple[str, str], object] = {}


def _op_for_backend(name: str, backend: str):
    fn = _op_cache.get((name, backend))
    if fn is None:
        fn = _resolve(name, backend)
        if backend != "reference":
            entry = _extension.entry(name) if backend != "triton" else None
            if entry is not None:
                _entries[fn] = (entry, _extension.entry(name + "_output"))
        _op_cache[(name, backend)] = fn
    return fn


def _resolve(name: str, backend: str):
    """Op `name` of `backend`, uncached: the reference function (behind its checks) or the OpOverload."""
    if backend == "reference":
        from cifarops import reference
        from cifarops.ops.common import PYTHON_CHECKS

        fn = getattr(reference, name)
        check = PYTHON_CHECKS.get(name)
        # the reference checks nothing itself: run the C++ checks' Python twin first
        return fn if check is None else _checked(check, fn)
    namespace = torch.ops.cifarops_triton if backend == "triton" else torch.ops.cifarops
    return getattr(namespace, name).default


def _traced_op(name: str, device: torch.device):
    """The op torch.compile or torch.export traces: the decomposition (COMPILE_DECOMPOSED, not under export)
    unless a backend was asked for (a layer's pin, use_backend, CIFAROPS_BACKEND: that backend's op, checked
    for availability as in eager), else the automatic choice's op. No cache is read or written: Dynamo would
    guard on a cache that its own trace filled and compile the model a second time at the next call."""
    backend = select_backend(device)
    if name in COMPILE_DECOMPOSED and current_override() is None and not _is_exporting():
        backend = "reference"
    return _resolve(name, backend)


def _checked(check, fn):
    def checked(*args):
        check(*args)
        return fn(*args)

    checked.__name__ = fn.__name__
    return checked


def op(name: str, device: torch.device):
    """The callable that runs op `name` on `device`'s tensors under the current choice of backend: the
    reference function, or the OpOverload `torch.ops.cifarops(_triton).<name>.default`."""
    if _is_compiling():
        return _traced_op(name, device)
    if _active_pins or _override is not None or _ENV_OVERRIDE is not None:
        return _op_for_backend(name, select_backend(device))
    key = (name, device.type)
    fn = _automatic.get(key)
    if fn is None:
        fn = _automatic[key] = _op_for_backend(name, default_backend(device))
    return fn


_automatic: dict[tuple[str, str], object] = {}  # (op, device type) -> the automatic choice's callable


def fast_op(name: str, x: torch.Tensor):
    """The first of fast_ops(name, x): the callable that returns every output of the op."""
    return fast_ops(name, x)[0]


def fast_ops(name: str, x: torch.Tensor) -> tuple:
    """(fn, first) for a call of op `name` whose first tensor is `x`. fn is `op(name, x.device)` or, when that
    is a compiled op (the cpu or cuda backend), its direct Python entry cifarops._C.<name> instead: the same
    dispatcher call without torch.ops' generic argument conversion (several µs a call). first is the entry
    cifarops._C.<name>_output, which returns the first output alone (no Python objects made and freed for the
    choices and RNG state a functional drops), or None: then call fn and take [0]. The entries only where
    torch.ops would add nothing: eager mode (torch.compile traces the decomposition or the OpOverload,
    torch.export the OpOverload), a plain tensor (a subclass may override __torch_function__) and no
    torch-function mode."""
    if _is_compiling():
        return _traced_op(name, x.device), None
    if type(x) is not torch.Tensor or _torch_function_mode_enabled():
        return op(name, x.device), None
    if _active_pins or _override is not None or _ENV_OVERRIDE is not None:
        return _direct(op(name, x.device))
    # Keyed by is_cuda: reading x.device builds a torch.device, the largest cost left in this function.
    table = _automatic_cuda if x.is_cuda else _automatic_cpu if x.is_cpu else None
    if table is None:
        return op(name, x.device), None
    pair = table.get(name)
    if pair is None:
        pair = table[name] = _direct(op(name, x.device))
    return pair


def _direct(fn) -> tuple:
    return _entries.get(fn, (fn, None))


_entries: dict = {}  # compiled OpOverload -> (its direct entry, its first-output entry or None); _op_for_backend
_automatic_cpu: dict[str, tuple] = {}  # op -> fast_ops' automatic choice for CPU tensors
_automatic_cuda: dict[str, tuple] = {}  # ... and for CUDA tensors (every CUDA device has the same choice)
_torch_function_mode_enabled = torch._C._is_torch_function_mode_enabled
_is_compiling = torch.compiler.is_compiling  # the function itself, which torch.compile folds to True
_is_exporting = torch.compiler.is_exporting

# The ops that torch.compile sees as their pointwise decomposition, unless a backend is pinned: the reference's
# formulas (cifarops.reference), with the noise drawn in the graph, instead of the opaque kernel. Inductor fuses
# the decomposition into its neighbours (BatchNorm's elementwise epilogue, the residual addition), which no
# opaque op allows: the compiled model then reads and writes each activation once, where the kernel would make
# BatchNorm's output go to memory and back. Chosen per op by measurement (python -m cifarops.bench.models
# --compile --compile-kernels; issue 17): maxout and FMP keep their kernels. Issue 31, the small variants at batch
# 32 on the 2-core CPU: resnet110-stochastic-depth steps in 23.2 ms decomposed, 25.9 ms with the kernel; wrn28-10
# with drop_activation=0.95 in 75.6 ms decomposed (a Philox draw per element in the graph), 41.7 ms with the
# kernel, which Drop-Activation therefore keeps. torch.export keeps one node per op. Change the set before
# compiling (torch.compile traces it once), e.g. to measure a kernel under compile.
COMPILE_DECOMPOSED = {"shake_drop", "shake_shake", "stochastic_depth"}
