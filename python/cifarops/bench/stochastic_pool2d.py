"""Stochastic pooling benchmark cases and the implementations they compare, shared by `python -m cifarops.bench`
and the pytest-benchmark suite in bench/. The baseline is what users write today: unfold every region and draw with
torch.multinomial (cifarops.bench.baselines.unfold_multinomial_pool)."""

from __future__ import annotations

import torch

import cifarops
import cifarops.functional as F
from cifarops.bench.baselines import unfold_multinomial_pool
from cifarops.bench.common import Benchmark, Case, compare, shape_cases, standard_providers

OP = "stochastic_pool2d"
BASELINE = "unfold+multinomial"  # what users run today: the "vs baseline" column
# Issue 32's target: a 96-channel 32x32 stage (Zeiler & Fergus's CIFAR-10 network has 64), 3x3 regions, stride 2.
QUICK_SHAPES = [(128, 96, 32, 32)]
SHAPES = QUICK_SHAPES + [(128, 64, 16, 16)]
KERNEL, STRIDE = 3, 2


def cases(dtypes, profile: str = "full", shapes=None) -> list[Case]:
    return shape_cases(OP, dtypes, profile, shapes, SHAPES, QUICK_SHAPES)


def _outputs(case: Case) -> int:
    n, c, h, w = case.shape
    return n * c * ((h - KERNEL) // STRIDE + 1) * ((w - KERNEL) // STRIDE + 1)


def moved_bytes(case: Case, mode: str) -> int:
    """Forward reads x and writes y and a byte per output; backward reads dy and the bytes and writes dx."""
    n, m, element = case.numel, _outputs(case), case.element_size
    forward = n * element + m * (element + 1)
    backward = m * (element + 1) + n * element
    return {"forward": forward, "backward": backward, "full": forward + backward}[mode]


def providers(device: torch.device) -> dict:
    """name -> function(x) returning the pooled output, for every implementation compared."""
    return standard_providers(device, lambda x: F.stochastic_pool2d(x, KERNEL, STRIDE),
                              {"unfold+multinomial": lambda x: unfold_multinomial_pool(x, KERNEL, STRIDE)})


def make(case: Case, device, provider) -> Benchmark:
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(case.shape, generator=generator).to(device=device, dtype=case.dtype).requires_grad_()
    return Benchmark(forward=lambda: provider(x), inputs=(x,))


def check_backend(backend: str, device, dtype) -> str | None:
    """Training (the same seed: the same draws) and evaluation against the reference, with padding and ceil mode,
    on a small odd shape."""
    x = torch.randn(3, 5, 11, 10, device=device).to(dtype)
    for training in (True, False):
        results = []
        for name in (backend, "reference"):
            torch.manual_seed(0)
            leaf = x.clone().requires_grad_()
            with cifarops.use_backend(name):
                y = F.stochastic_pool2d(leaf, 3, 2, 1, True, training=training)
            results.append([y, *torch.autograd.grad(y, [leaf], torch.ones_like(y))])
        problem = compare(*results)
        if problem:
            return f"training={training}: {problem}"
    return None
