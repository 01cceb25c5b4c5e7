"""Stochastic depth benchmark cases and the implementations they compare, shared by `python -m cifarops.bench`
and the pytest-benchmark suite in bench/."""

from __future__ import annotations

import torch

import cifarops
import cifarops.functional as F
from cifarops.bench.baselines import timm_drop_path
from cifarops.bench.common import Case, compare, shape_cases, standard_providers
from cifarops.bench.shake_drop import make, moved_bytes  # noqa: F401  (the same residual pass: y = x + g * h)

OP = "stochastic_depth"
BASELINE = "timm-style"  # what users run today: the "vs baseline" column
# Issue 31's shapes: a ResNet's 32x32 stage at 64 channels and its 8x8 stage at 256; p as Huang's last block.
QUICK_SHAPES = [(128, 64, 32, 32), (128, 256, 8, 8)]
SHAPES = QUICK_SHAPES
P = 0.5


def cases(dtypes, profile: str = "full", shapes=None) -> list[Case]:
    return shape_cases(OP, dtypes, profile, shapes, SHAPES, QUICK_SHAPES)


def providers(device: torch.device) -> dict:
    """name -> function(h, x) returning the block output, for every implementation compared."""
    return standard_providers(device, lambda h, x: F.stochastic_depth(h, x, p=P),
                              {"timm-style": lambda h, x: timm_drop_path(h, x, P)})


def check_backend(backend: str, device, dtype) -> str | None:
    """Each mode, form and shortcut width against the reference, on a small odd shape."""
    for mode in ("row", "batch"):
        for scale_by_keep in (True, False):
            for shortcut_channels in (None, 5, 8):
                h = torch.randn(6, 8, 5, 7, device=device).to(dtype)
                x = None if shortcut_channels is None else torch.randn(6, shortcut_channels, 5, 7, device=device).to(dtype)
                results = []
                for name in (backend, "reference"):
                    torch.manual_seed(0)
                    hh = h.clone().requires_grad_()
                    xx = None if x is None else x.clone().requires_grad_()
                    with cifarops.use_backend(name):
                        y = F.stochastic_depth(hh, xx, p=0.3, mode=mode, scale_by_keep=scale_by_keep)
                    grads = torch.autograd.grad(y, [hh] + ([xx] if xx is not None else []), torch.ones_like(y))
                    results.append([y, *grads])
                problem = compare(*results)
                if problem:
                    return f"mode={mode} scale_by_keep={scale_by_keep} shortcut={shortcut_channels}: {problem}"
    return None
