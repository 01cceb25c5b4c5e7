"""Pure-PyTorch versions of every op: the test oracle and the fallback backend.

Each function mirrors its torch.library op argument for argument (noise is an input), and computes in
the same precision as the kernels: float64 for float64 tensors, float32 otherwise, rounded once at the end.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from cifarops.philox import philox_uniform


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------- ShakeDrop


def shake_drop_scale(gate: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """b + c - b*c, written b + (1 - b) c: exact for gates of 0 and 1 (same form as the kernels)."""
    return gate + (1 - gate) * coef


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))


def _coefficient(
    h: torch.Tensor, coef: Optional[torch.Tensor], seed: Optional[torch.Tensor], coef_range: Sequence[float], stream: int
) -> torch.Tensor:
    """alpha or beta, broadcastable to h: (N, C) or h-shaped tensors as given, Philox noise for None."""
    if coef is None:
        index = torch.arange(h.numel(), dtype=torch.int64, device=h.device).reshape(h.shape)
        lo, hi = torch.tensor([float(coef_range[0]), float(coef_range[1])], dtype=torch.float32, device=h.device)
        return (lo + (hi - lo) * philox_uniform(seed, index, stream)).to(opmath_dtype(h.dtype))
    if coef.dim() == 2 and h.dim() != 2:
        return coef.reshape(*coef.shape, *([1] * (h.dim() - 2)))
    return coef


def shake_drop_backward(
    grad_y: torch.Tensor,
    gate: torch.Tensor,
    beta: Optional[torch.Tensor],
    seed: Optional[torch.Tensor],
    beta_range: Sequence[float],
) -> torch.Tensor:
    """grad_h = (gate + beta - gate * beta) * grad_y (the `_shake_drop_backward` op)."""
    scale = shake_drop_scale(_per_sample(gate, grad_y), _coefficient(grad_y, beta, seed, beta_range, stream=1))
    return (scale * grad_y.to(scale.dtype)).to(grad_y.dtype)


class _ShakeDrop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, shortcut, gate, alpha, beta, seed, alpha_range, beta_range):
        scale = shake_drop_scale(_per_sample(gate, h), _coefficient(h, alpha, seed, alpha_range, stream=0))
        y = scale * h.to(scale.dtype)
        if shortcut is not None:
            y[:, : shortcut.shape[1]] += shortcut.to(scale.dtype)
        ctx.save_for_backward(gate, beta, seed)
        ctx.beta_range = beta_range
        ctx.shortcut_channels = None if shortcut is None else shortcut.shape[1]
        return y.to(h.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        gate, beta, seed = ctx.saved_tensors
        grad_h = shake_drop_backward(grad_y, gate, beta, seed, ctx.beta_range)
        grad_shortcut = None if ctx.shortcut_channels is None else grad_y[:, : ctx.shortcut_channels]
        return grad_h, grad_shortcut, None, None, None, None, None, None


def shake_drop(
    h: torch.Tensor,
    shortcut: Optional[torch.Tensor],
    gate: torch.Tensor,
    alpha: Optional[torch.Tensor],
    beta: Optional[torch.Tensor],
    seed: Optional[torch.Tensor],
    alpha_range: Sequence[float],
    beta_range: Sequence[float],
) -> torch.Tensor:
    """y = shortcut + (gate + alpha - gate * alpha) * h; backward uses beta (the `shake_drop` op).

    gate: (N,); alpha, beta: (N, C), h's shape, or None for Philox noise from `seed` in the given range.
    A shortcut with fewer channels than h is added to h's first channels (PyramidNet's zero padding).
    """
    return _ShakeDrop.apply(h, shortcut, gate, alpha, beta, seed, alpha_range, beta_range)


# --------------------------------------------------------------------------------------------- Shake-Shake


def shake_shake_mix(alpha: torch.Tensor, h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """alpha h1 + (1 - alpha) h2, in the kernels' order of operations."""
    return alpha * h1 + (1 - alpha) * h2


def shake_shake_backward(grad_y: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta * grad_y, (1 - beta) * grad_y) (the `_shake_shake_backward` op)."""
    b = _per_sample(beta, grad_y)
    g = grad_y.to(b.dtype)
    return (b * g).to(grad_y.dtype), ((1 - b) * g).to(grad_y.dtype)


class _ShakeShake(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h1, h2, shortcut, alpha, beta):
        a = _per_sample(alpha, h1)
        y = shake_shake_mix(a, h1.to(a.dtype), h2.to(a.dtype))
        if shortcut is not None:
            y = y + shortcut.to(a.dtype)
        ctx.save_for_backward(beta)
        ctx.has_shortcut = shortcut is not None
        return y.to(h1.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        (beta,) = ctx.saved_tensors
        grad_h1, grad_h2 = shake_shake_backward(grad_y, beta)
        return grad_h1, grad_h2, grad_y if ctx.has_shortcut else None, None, None


def shake_shake(
    h1: torch.Tensor, h2: torch.Tensor, shortcut: Optional[torch.Tensor], alpha: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """y = shortcut + alpha * h1 + (1 - alpha) * h2; backward scales the gradient by beta and 1 - beta (the
    `shake_shake` op). alpha, beta: (N,) in the compute type."""
    return _ShakeShake.apply(h1, h2, shortcut, alpha, beta)
