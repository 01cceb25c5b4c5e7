"""pytest-benchmark suites (`pytest bench/ --benchmark-only`): the same cases and implementations as
`python -m cifarops.bench`, defined once in python/cifarops/bench/."""

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronized(fn):
    """On a GPU, wait for the kernels so pytest-benchmark's wall clock measures them."""
    if DEVICE.type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize(DEVICE)
        return out

    return run
