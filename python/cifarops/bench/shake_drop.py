"""ShakeDrop benchmark cases and the implementations they compare, shared by `python -m cifarops.bench`
and the pytest-benchmark suite in bench/."""

from __future__ import annotations

import torch

import cifarops
import cifarops.functional as F
from cifarops.bench.baselines import owruby_shake_drop
from cifarops.bench.common import Benchmark, Case, compare, shape_cases, standard_providers

OP = "shake_drop"
BASELINE = "owruby-style"  # what users run today: the "vs baseline" column
# CIFAR shapes: PyramidNet widths 16 to 256 at the 32x32 and 8x8 stages; the shortcut is as wide as h.
SHAPES = [(128, c, s, s) for c in (16, 64, 256) for s in (32, 8)]
QUICK_SHAPES = [(128, 64, 32, 32), (128, 256, 8, 8)]


def cases(dtypes, profile: str = "full", shapes=None) -> list[Case]:
    return shape_cases(OP, dtypes, profile, shapes, SHAPES, QUICK_SHAPES)


def moved_bytes(case: Case, mode: str) -> int:
    """The fewest bytes the op must move: forward reads h and the shortcut and writes y; backward reads dy and
    writes dh (the shortcut's gradient is dy itself)."""
    n, element = case.numel, case.element_size
    return {"forward": 3 * n, "backward": 2 * n, "full": 5 * n}[mode] * element


def _inputs(case: Case, device):
    generator = torch.Generator(device="cpu").manual_seed(0)
    h = torch.randn(case.shape, generator=generator).to(device=device, dtype=case.dtype).requires_grad_()
    x = torch.randn(case.shape, generator=generator).to(device=device, dtype=case.dtype).requires_grad_()
    return h, x


def providers(device: torch.device) -> dict:
    """name -> function(h, x) returning the block output, for every implementation compared."""
    return standard_providers(device, lambda h, x: F.shake_drop(h, x), {"owruby-style": owruby_shake_drop})


def make(case: Case, device, provider) -> Benchmark:
    h, x = _inputs(case, device)
    return Benchmark(forward=lambda: provider(h, x), inputs=(h, x))


def check_backend(backend: str, device, dtype) -> str | None:
    """Each level, gate level and shortcut width against the reference, on a small odd shape."""
    for level in F.LEVELS:
        for gate_level in F.GATE_LEVELS:
            for shortcut_channels in (None, 5, 8):
                h = torch.randn(6, 8, 5, 7, device=device).to(dtype)
                x = None if shortcut_channels is None else torch.randn(6, shortcut_channels, 5, 7, device=device).to(dtype)
                results = []
                for name in (backend, "reference"):
                    torch.manual_seed(0)
                    hh = h.clone().requires_grad_()
                    xx = None if x is None else x.clone().requires_grad_()
                    with cifarops.use_backend(name):
                        y = F.shake_drop(hh, xx, level=level, gate_level=gate_level)
                    grads = torch.autograd.grad(y, [hh] + ([xx] if xx is not None else []), torch.ones_like(y))
                    results.append([y, *grads])
                problem = compare(*results)
                if problem:
                    return f"level={level} gate_level={gate_level} shortcut={shortcut_channels}: {problem}"
    return None
