"""ShakeDrop microbenchmarks: every implementation of python/cifarops/bench/shake_drop.py, in forward,
backward and both, grouped per case so that pytest-benchmark prints them side by side."""

import os

import pytest
import torch

from cifarops.bench import shake_drop
from cifarops.bench.common import MODES, timed
from conftest import DEVICE, synchronized

FULL = os.environ.get("CIFAROPS_BENCH_FULL") == "1"  # every shape, not just the quick ones
CASES = shake_drop.cases([torch.float32], quick=not FULL)
PROVIDERS = shake_drop.providers(DEVICE)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("case", CASES, ids=[c.label.replace(" ", "_") for c in CASES])
def test_shake_drop(benchmark, case, provider, mode):
    benchmark.group = f"{case.label} {mode}"
    fn = synchronized(timed(shake_drop.make(case, DEVICE, PROVIDERS[provider]), mode))
    benchmark.pedantic(fn, warmup_rounds=3, rounds=20, iterations=1)
