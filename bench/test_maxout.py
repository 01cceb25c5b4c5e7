"""Maxout microbenchmarks: every implementation of python/cifarops/bench/maxout.py, in forward, backward
and both, grouped per case."""

import os

import pytest
import torch

from cifarops.bench import maxout
from cifarops.bench.common import MODES, timed
from conftest import DEVICE, synchronized

FULL = os.environ.get("CIFAROPS_BENCH_FULL") == "1"
CASES = maxout.cases([torch.float32], quick=not FULL)
PROVIDERS = maxout.providers(DEVICE)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("case", CASES, ids=[c.label.replace(" ", "_") for c in CASES])
def test_maxout(benchmark, case, provider, mode):
    benchmark.group = f"{case.label} {mode}"
    fn = synchronized(timed(maxout.make(case, DEVICE, PROVIDERS[provider]), mode))
    benchmark.pedantic(fn, warmup_rounds=3, rounds=20, iterations=1)
