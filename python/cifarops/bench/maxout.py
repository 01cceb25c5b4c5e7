"""Maxout benchmark cases and the implementations they compare, shared by `python -m cifarops.bench` and
the pytest-benchmark suite in bench/."""

from __future__ import annotations

import torch

import cifarops
import cifarops.functional as F
from cifarops.bench.common import Benchmark, Case, compare, profile_shapes, standard_providers

OP = "maxout"
BASELINE = "view+max"  # what users run today: the "vs baseline" column
# Convolutional maxout at 32x32 with 192 output channels, and a fully connected maxout layer of 2400 units.
SHAPES = [(128, 192 * k, 32, 32) for k in (2, 4)] + [(128, 2400 * k) for k in (2, 4)]
QUICK_SHAPES = [(128, 384, 32, 32), (128, 4800)]


def _pieces(shape) -> int:
    """k of the default shapes (C = 192 k or 2400 k); 2 for shapes given on the command line."""
    unit = 192 if len(shape) == 4 else 2400
    return shape[1] // unit if shape[1] % unit == 0 else 2


def cases(dtypes, profile: str = "full", shapes=None) -> list[Case]:
    shapes = shapes or profile_shapes(profile, SHAPES, QUICK_SHAPES)
    return [Case(OP, tuple(s), dtype, (("k", _pieces(s)),)) for dtype in dtypes for s in shapes]


def moved_bytes(case: Case, mode: str) -> int:
    """Forward reads x and writes y and one byte per output; backward reads dy and the bytes and writes dx."""
    n, element, k = case.numel, case.element_size, case.param("k")
    forward = n * element + n // k * (element + 1)
    backward = n // k * (element + 1) + n * element
    return {"forward": forward, "backward": backward, "full": forward + backward}[mode]


def _view_max(x, k):
    return x.unflatten(1, (x.shape[1] // k, k)).max(2).values


def _view_amax(x, k):
    return x.unflatten(1, (x.shape[1] // k, k)).amax(2)


def providers(device: torch.device) -> dict:
    """name -> function(x, k) returning the maxout output, for every implementation compared."""
    return standard_providers(device, lambda x, k: F.maxout(x, k), {"view+max": _view_max, "view+amax": _view_amax})


def make(case: Case, device, provider) -> Benchmark:
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(case.shape, generator=generator).to(device=device, dtype=case.dtype).requires_grad_()
    k = case.param("k")
    return Benchmark(forward=lambda: provider(x, k), inputs=(x,))


def check_backend(backend: str, device, dtype) -> str | None:
    """Maxout, probabilistic maxout (drawn and expected) against the reference, both groupings, several dims."""
    for grouping in ("contiguous", "strided"):
        for shape, dim, k in (((6, 12, 5, 7), 1, 3), ((6, 8, 5, 4), -1, 2), ((7, 20), 1, 4)):
            n = 1
            for s in shape:
                n *= s
            x = (torch.randperm(n, device=device).to(torch.float64) / n).reshape(shape).to(dtype)  # no ties
            for label, fn in (
                ("maxout", lambda t: F.maxout(t, k, dim, grouping)),
                ("sampled", lambda t: F.probabilistic_maxout(t, k, dim, grouping, temperature=0.5)),
                ("expected", lambda t: F.probabilistic_maxout(t, k, dim, grouping, temperature=0.5, training=False)),
            ):
                results = []
                for name in (backend, "reference"):
                    torch.manual_seed(0)
                    leaf = x.clone().requires_grad_()
                    with cifarops.use_backend(name):
                        y = fn(leaf)
                    results.append([y, *torch.autograd.grad(y, [leaf], torch.ones_like(y))])
                problem = compare(*results)
                if problem:
                    return f"{label} {grouping} shape={shape} dim={dim}: {problem}"
    return None
