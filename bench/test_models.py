"""Training-step benchmarks of every model of the zoo (`pytest bench/ --benchmark-only`): cifarops layers,
the reference layers, and each checkpoint mode, grouped per model so that pytest-benchmark prints them side
by side. On the CPU the models are the small variants of tests/test_models.py unless CIFAROPS_BENCH_FULL=1;
on a GPU the papers' networks at batch 128. Peak memory is `python -m cifarops.bench.models`'s business (each
configuration in its own process)."""

import os

import pytest

import cifarops.models as models
from cifarops.bench.models import training_step
from conftest import DEVICE, synchronized

FULL = os.environ.get("CIFAROPS_BENCH_FULL") == "1" or DEVICE.type == "cuda"
SMALL = models.SMALL
CONFIGS = [("cifarops", "none"), ("reference", "none"), ("cifarops", "full"), ("cifarops", "selective"),
           ("cifarops", "cheap")]


@pytest.mark.parametrize("layers, checkpoint", CONFIGS, ids=[f"{l}-{c}" for l, c in CONFIGS])
@pytest.mark.parametrize("name", models.names())
def test_training_step(benchmark, name, layers, checkpoint):
    config = {"model": name, "layers": layers, "checkpoint": checkpoint, "batch": 128 if FULL else 8,
              "autocast": False, "channels_last": False, "overrides": {} if FULL else SMALL[name]}
    _, step = training_step(config, DEVICE)
    benchmark.group = f"{name} training step"
    benchmark.pedantic(synchronized(step), warmup_rounds=1, rounds=5, iterations=1)
