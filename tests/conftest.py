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
