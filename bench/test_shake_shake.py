"""Shake-Shake microbenchmarks: every implementation of python/cifarops/bench/shake_shake.py, in forward,
backward and both, grouped per case."""

import os

import pytest
import torch

from cifarops.bench import shake_shake
from cifarops.bench.common import MODES, timed
from conftest import DEVICE, synchronized

FULL = os.environ.get("CIFAROPS_BENCH_FULL") == "1"
CASES = shake_shake.cases([torch.float32], quick=not FULL)
PROVIDERS = shake_shake.providers(DEVICE)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("case", CASES, ids=[c.label.replace(" ", "_") for c in CASES])
def test_shake_shake(benchmark, case, provider, mode):
    benchmark.group = f"{case.label} {mode}"
    fn = synchronized(timed(shake_shake.make(case, DEVICE, PROVIDERS[provider]), mode))
    benchmark.pedantic(fn, warmup_rounds=3, rounds=20, iterations=1)
