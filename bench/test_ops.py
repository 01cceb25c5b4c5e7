"""Microbenchmarks of every op: each implementation that `python -m cifarops.bench` compares, in forward,
backward and both, grouped per case so that pytest-benchmark prints them side by side. The cases and
implementations are those of python/cifarops/bench/<op>.py. CIFAROPS_BENCH_FULL=1 runs every shape."""

import os

import pytest
import torch

from cifarops.bench.__main__ import OPS
from cifarops.bench.common import MODES, CompiledPerCase, timed
from conftest import DEVICE, synchronized

FULL = os.environ.get("CIFAROPS_BENCH_FULL") == "1"
PROVIDERS = {module: module.providers(DEVICE) for module in OPS.values()}
PARAMS = [
    pytest.param(module, case, name, id=f"{case.label}-{name}".replace(" ", "_"))
    for module in OPS.values()
    for case in module.cases([torch.float32], "full" if FULL else "quick")
    for name in PROVIDERS[module]
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("module, case, provider", PARAMS)
def test_op(benchmark, module, case, provider, mode):
    benchmark.group = f"{case.label} {mode}"
    implementation = PROVIDERS[module][provider]
    if isinstance(implementation, CompiledPerCase):  # compiled afresh for each case and mode
        implementation = implementation.for_case()
    fn = synchronized(timed(module.make(case, DEVICE, implementation), mode))
    benchmark.pedantic(fn, warmup_rounds=3, rounds=20, iterations=1)
