"""Drop-Activation benchmark cases and the implementations they compare, shared by `python -m cifarops.bench`
and the pytest-benchmark suite in bench/."""

from __future__ import annotations

import torch

import cifarops
import cifarops.functional as F
from cifarops.bench.baselines import official_drop_relu
from cifarops.bench.common import Benchmark, Case, compare, shape_cases, standard_providers

OP = "drop_activation"
BASELINE = "official-style"  # what users run today: the "vs baseline" column
# Issue 31's shapes: WRN's 32x32 stage at 64 channels and an 8x8 stage at 256; the paper's keep of 0.95.
QUICK_SHAPES = [(128, 64, 32, 32), (128, 256, 8, 8)]
SHAPES = QUICK_SHAPES
KEEP = 0.95


def cases(dtypes, profile: str = "full", shapes=None) -> list[Case]:
    return shape_cases(OP, dtypes, profile, shapes, SHAPES, QUICK_SHAPES)


def moved_bytes(case: Case, mode: str) -> int:
    """The fewest bytes the op must move: forward reads x and writes y; backward reads dy and y, writes dx."""
    n, element = case.numel, case.element_size
    return {"forward": 2 * n, "backward": 3 * n, "full": 5 * n}[mode] * element


def providers(device: torch.device) -> dict:
    """name -> function(x) returning the activation, for every implementation compared."""
    return standard_providers(device, lambda x: F.drop_activation(x, KEEP),
                              {"official-style": lambda x: official_drop_relu(x, KEEP)})


def make(case: Case, device, provider) -> Benchmark:
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(case.shape, generator=generator).to(device=device, dtype=case.dtype).requires_grad_()
    return Benchmark(forward=lambda: provider(x), inputs=(x,))


def check_backend(backend: str, device, dtype) -> str | None:
    """Training and evaluation against the reference, on a small odd shape."""
    for training in (True, False):
        x = torch.randn(6, 8, 5, 7, device=device).to(dtype)
        results = []
        for name in (backend, "reference"):
            torch.manual_seed(0)
            xx = x.clone().requires_grad_()
            with cifarops.use_backend(name):
                y = F.drop_activation(xx, 0.7, training=training)
            results.append([y, *torch.autograd.grad(y, [xx], torch.ones_like(y))])
        problem = compare(*results)
        if problem:
            return f"training={training}: {problem}"
    return None
