"""Shared test configuration: which (device, backend) pairs run here, and one tolerance table.

Backends that cannot run on this machine are not generated at all (rather than skipped): CPU CI runs the
`cpu` backend in one pytest process and the `triton` backend in a second one under TRITON_INTERPRET=1;
a GPU machine adds `cuda` and `triton` on CUDA tensors.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import cifarops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# (device, backend) pairs under test, the reference excepted: it is the oracle.
KERNEL_BACKENDS = [(d, b) for d in DEVICES for b in cifarops.available_backends(d) if b != "reference"]
# Every backend, the reference included, for tests with hand-worked answers.
ALL_BACKENDS = [(d, b) for d in DEVICES for b in cifarops.available_backends(d)]

# torch.compile cases: Inductor cannot compile Triton kernels for CPU tensors (the interpreter is eager-only),
# so the Triton backend is compiled only where it runs on a GPU; the reference is compiled too.
COMPILE_BACKENDS = [(d, b) for d, b in KERNEL_BACKENDS if not (b == "triton" and d == "cpu")] + [("cpu", "reference")]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# (rtol, atol) per dtype. Kernels compute in the reference's precision, so differences are rounding only
# (a fused multiply-add on a GPU, say).
TOLERANCES = {
    torch.float32: (1e-6, 1e-6),
    torch.float64: (1e-12, 1e-12),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
}


@contextlib.contextmanager
def deterministic():
    """torch.use_deterministic_algorithms(True) inside the block."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def ids(pairs):
    return [f"{d}-{b}" for d, b in pairs]


def assert_close(actual, expected, dtype=None):
    rtol, atol = TOLERANCES[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def namespace_for(backend: str):
    """The torch.ops namespace whose ops run on `backend`."""
    return torch.ops.cifarops_triton if backend == "triton" else torch.ops.cifarops


def matches_reference(run, *args, seed: int = 1234, **kwargs):
    """Runs run(*args, **kwargs), which returns a tuple of tensors (or None), on the selected backend and on
    the reference from the same seed, asserts that the two agree in dtype, shape and value, and returns
    the backend's tuple."""
    torch.manual_seed(seed)
    got = run(*args, **kwargs)
    torch.manual_seed(seed)
    with cifarops.use_backend("reference"):
        want = run(*args, **kwargs)
    for a, b in zip(got, want, strict=True):
        if b is None:
            assert a is None
        else:
            assert a.dtype == b.dtype and a.shape == b.shape
            assert_close(a, b)
    return got


@pytest.fixture(params=KERNEL_BACKENDS, ids=ids(KERNEL_BACKENDS))
def kernel_backend(request):
    """(device, backend) of a kernel backend, with that backend selected for the test."""
    device, backend = request.param
    with cifarops.use_backend(backend):
        yield device, backend


@pytest.fixture(params=ALL_BACKENDS, ids=ids(ALL_BACKENDS))
def any_backend(request):
    device, backend = request.param
    with cifarops.use_backend(backend):
        yield device, backend
