"""What the reference ops share: the compute type and the uniforms of a level's logical indices."""

from __future__ import annotations

import torch

from cifarops.philox import philox_uniform


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))


def uniform_at(state: torch.Tensor, shape: tuple, like: torch.Tensor, stream: int) -> torch.Tensor:
    """u(index, stream) for the logical indices of a (broadcastable) `shape` of h: batch (1, 1), sample (N, 1),
    channel (N, C) or pixel (h's shape), as float32 shaped to broadcast against h."""
    numel = 1
    for size in shape:
        numel *= size
    index = torch.arange(numel, dtype=torch.int64, device=like.device).reshape(*shape, *([1] * (like.dim() - len(shape))))
    return philox_uniform(state, index, stream)
