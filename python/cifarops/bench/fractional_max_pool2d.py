"""Fractional max-pooling benchmark cases and the implementations they compare, shared by
`python -m cifarops.bench` and the pytest-benchmark suite in bench/. The baseline is PyTorch's native op
(the same k x k windows); every implementation draws its own samples per call, as PyTorch's does."""

from __future__ import annotations

import torch

import cifarops
import cifarops.functional as F
from cifarops.bench.common import Benchmark, Case, compare, profile_shapes, standard_providers

OP = "fractional_max_pool2d"
BASELINE = "native"  # what users run today: the "vs baseline" column
TARGET = ((128, 96, 32, 32), (22, 22))  # the target shape
# Graham's CIFAR-10 FMP network (arXiv 1412.6071): ratio 2^(1/3) from 94 x 94, C = 32 per layer, planes down to
# 2 x 2; and ratio sqrt(2) layers. Batch 32.
GRAHAM = [
    ((32, 32, 94, 94), (74, 74)), ((32, 96, 46, 46), (36, 36)), ((32, 160, 28, 28), (22, 22)),
    ((32, 224, 17, 17), (13, 13)), ((32, 320, 10, 10), (8, 8)), ((32, 320, 3, 3), (2, 2)),
    ((32, 64, 32, 32), (22, 22)), ((32, 128, 16, 16), (11, 11)),
]
SHAPES = [TARGET] + GRAHAM
QUICK_SHAPES = [TARGET]


def cases(dtypes, profile: str = "full", shapes=None) -> list[Case]:
    """Command-line shapes pool to 11/16 of the input, PyTorch's common output_ratio of about 0.7."""
    chosen = [(tuple(s), tuple(max(1, d * 11 // 16) for d in s[2:])) for s in shapes] if shapes else None
    chosen = chosen or profile_shapes(profile, SHAPES, QUICK_SHAPES)
    return [Case(OP, shape, dtype, (("out", out), ("k", 2))) for dtype in dtypes for shape, out in chosen]


def moved_bytes(case: Case, mode: str) -> int:
    """Forward reads x and writes y and a byte per output; backward reads dy and the bytes and writes dx."""
    n, element = case.numel, case.element_size
    out_h, out_w = case.param("out")
    m = case.numel // (case.shape[2] * case.shape[3]) * out_h * out_w
    forward = n * element + m * (element + 1)
    backward = m * (element + 1) + n * element
    return {"forward": forward, "backward": backward, "full": forward + backward}[mode]


def _native(x, out, k):
    return torch.nn.functional.fractional_max_pool2d(x, k, output_size=out)


def providers(device: torch.device) -> dict:
    """name -> function(x, out, k) returning the pooled output, for every implementation compared."""
    return standard_providers(device, lambda x, out, k: F.fractional_max_pool2d(x, k, output_size=out),
                              {"native": _native})


def make(case: Case, device, provider) -> Benchmark:
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(case.shape, generator=generator).to(device=device, dtype=case.dtype).requires_grad_()
    out, k = case.param("out"), case.param("k")
    return Benchmark(forward=lambda: provider(x, out, k), inputs=(x,))


def check_backend(backend: str, device, dtype) -> str | None:
    """Every region kind and sequence against the reference (same seed, so the same draws), and the default
    windows against PyTorch's native op, outputs, indices and gradients."""
    x = torch.randn(3, 4, 15, 13, device=device).to(dtype)
    variants = [dict(kernel_size=2), dict(kernel_size=(3, 2)), dict(regions="disjoint"),
                dict(regions="overlapping", sequence="random", per_image=True)]
    for kwargs in variants:
        results = []
        for name in (backend, "reference"):
            torch.manual_seed(0)
            leaf = x.clone().requires_grad_()
            with cifarops.use_backend(name):
                y, index = F.fractional_max_pool2d(leaf, output_size=(10, 9), return_indices=True, **kwargs)
            results.append([y, index.double(), *torch.autograd.grad(y, [leaf], torch.ones_like(y))])
        problem = compare(*results)
        if problem:
            return f"{kwargs}: {problem}"
    samples = torch.rand(3, 4, 2, device=device, dtype=dtype)
    with cifarops.use_backend(backend):
        ours = F.fractional_max_pool2d(x, 2, output_size=(10, 9), return_indices=True, _random_samples=samples)
    native = torch.nn.functional.fractional_max_pool2d(x, 2, output_size=(10, 9), return_indices=True,
                                                       _random_samples=samples)
    if not (torch.equal(ours[0], native[0]) and torch.equal(ours[1], native[1])):
        return "windows differ from PyTorch's native op for the same samples"
    return None
