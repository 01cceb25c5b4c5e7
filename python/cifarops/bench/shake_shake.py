"""Shake-Shake benchmark cases and the implementations they compare, shared by `python -m cifarops.bench`
and the pytest-benchmark suite in bench/."""

from __future__ import annotations

import torch

import cifarops
import cifarops.functional as F
from cifarops.bench.baselines import hysts_shake_shake
from cifarops.bench.common import Benchmark, Case, compare, shape_cases, standard_providers

OP = "shake_shake"
BASELINE = "hysts-style"  # what users run today: the "vs baseline" column
# Shake-Shake 26 2x96d: widths 96, 192 and 384 at 32x32, 16x16 and 8x8.
SHAPES = [(128, 96, 32, 32), (128, 192, 16, 16), (128, 384, 8, 8)]
QUICK_SHAPES = [(128, 96, 32, 32)]


def cases(dtypes, profile: str = "full", shapes=None) -> list[Case]:
    return shape_cases(OP, dtypes, profile, shapes, SHAPES, QUICK_SHAPES)


def moved_bytes(case: Case, mode: str) -> int:
    """Forward reads h1, h2 and the shortcut and writes y; backward reads dy and writes dh1 and dh2."""
    n, element = case.numel, case.element_size
    return {"forward": 4 * n, "backward": 3 * n, "full": 7 * n}[mode] * element


def providers(device: torch.device) -> dict:
    """name -> function(h1, h2, x) returning the block output, for every implementation compared."""
    return standard_providers(device, lambda h1, h2, x: F.shake_shake(h1, h2, x), {"hysts-style": hysts_shake_shake})


def make(case: Case, device, provider) -> Benchmark:
    generator = torch.Generator(device="cpu").manual_seed(0)
    h1, h2, x = (
        torch.randn(case.shape, generator=generator).to(device=device, dtype=case.dtype).requires_grad_() for _ in range(3)
    )
    return Benchmark(forward=lambda: provider(h1, h2, x), inputs=(h1, h2, x))


def check_backend(backend: str, device, dtype) -> str | None:
    """Every mode and level against the reference, with and without the shortcut, on a small odd shape."""
    for forward_mode in F.SHAKE_FORWARD_MODES:
        for backward_mode in F.SHAKE_BACKWARD_MODES:
            for level in F.SHAKE_LEVELS:
                for with_shortcut in (False, True):
                    inputs = [torch.randn(6, 8, 5, 7, device=device).to(dtype) for _ in range(3 if with_shortcut else 2)]
                    results = []
                    for name in (backend, "reference"):
                        torch.manual_seed(0)
                        leaves = [t.clone().requires_grad_() for t in inputs]
                        with cifarops.use_backend(name):
                            y = F.shake_shake(*leaves, forward_mode=forward_mode, backward_mode=backward_mode, level=level)
                        results.append([y, *torch.autograd.grad(y, leaves, torch.ones_like(y))])
                    problem = compare(*results)
                    if problem:
                        return f"{forward_mode}/{backward_mode}/{level} shortcut={with_shortcut}: {problem}"
    return None
