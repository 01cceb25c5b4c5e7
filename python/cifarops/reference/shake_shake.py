"""Shake-Shake in pure PyTorch, argument for argument as its op (see the package's docstring)."""

from __future__ import annotations

from typing import Optional

import torch

from cifarops.philox import draw_state, philox_uniform
from cifarops.reference.common import opmath_dtype


def shake_shake_mix(alpha: torch.Tensor, h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """alpha h1 + (1 - alpha) h2, in the kernels' order of operations."""
    return alpha * h1 + (1 - alpha) * h2


def _shake_shake_draws(forward_mode: str, backward_mode: str, training: bool, alpha, beta) -> bool:
    """Whether the op takes an RNG state: alpha drawn, or beta drawn by its backward."""
    if not training:
        return False
    alpha_drawn = alpha is None and forward_mode == "shake"
    return alpha_drawn or (beta is None and (backward_mode == "shake" or (backward_mode == "keep" and alpha_drawn)))


def shake_shake_coefficient(
    x: torch.Tensor, coef: Optional[torch.Tensor], state: Optional[torch.Tensor], stream: Optional[int], level: str
) -> torch.Tensor:
    """One coefficient per sample, shaped (N, 1, ...) in the compute type: the explicit (1,) or (N,) ``coef``,
    else u(i, stream) of ``state`` (i = n at level "sample", 0 at "batch") when ``stream`` is given, else 0.5."""
    n, acc = x.shape[0], opmath_dtype(x.dtype)
    if coef is not None:
        values = coef.to(acc).expand(n)
    elif stream is not None:
        index = torch.arange(n, dtype=torch.int64, device=x.device)
        if level == "batch":
            index = torch.zeros_like(index)
        values = philox_uniform(state, index, stream).to(acc)
    else:
        values = torch.full((n,), 0.5, dtype=acc, device=x.device)
    return values.reshape(n, *([1] * (x.dim() - 1)))


def _shake_shake_backward(
    grad_y: torch.Tensor, rng_state: torch.Tensor, beta: Optional[torch.Tensor], backward_mode: str, level: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta * grad_y, (1 - beta) * grad_y) (the `_shake_shake_backward` op): beta explicit, else recomputed
    from rng_state: backward_mode "shake" (stream 1), "keep" (the forward's drawn alpha, stream 0), "even" (0.5)."""
    stream = {"shake": 1, "keep": 0}.get(backward_mode) if beta is None else None
    b = shake_shake_coefficient(grad_y, beta, rng_state, stream, level)
    g = grad_y.to(b.dtype)
    return (b * g).to(grad_y.dtype), ((1 - b) * g).to(grad_y.dtype)


class _ShakeShake(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, state):
        drawn = training and alpha is None and forward_mode == "shake"
        a = shake_shake_coefficient(h1, alpha, state, 0 if drawn else None, level)
        y = shake_shake_mix(a, h1.to(a.dtype), h2.to(a.dtype))
        if shortcut is not None:
            y = y + shortcut.to(a.dtype)
        # Where the backward's beta comes from (as csrc/args/shake_shake.cpp's beta_source).
        explicit, mode = None, "even"
        if training:
            if beta is not None:
                explicit = beta
            elif backward_mode == "keep":
                explicit, mode = (alpha, "even") if alpha is not None else (None, "keep" if drawn else "even")
            else:
                mode = backward_mode
        ctx.save_for_backward(state, explicit)
        ctx.mode, ctx.level, ctx.has_shortcut = mode, level, shortcut is not None
        ctx.mark_non_differentiable(state)
        return y.to(h1.dtype), state

    @staticmethod
    def backward(ctx, grad_y, _grad_state):
        state, beta = ctx.saved_tensors
        grad_h1, grad_h2 = _shake_shake_backward(grad_y, state, beta, ctx.mode, ctx.level)
        return (grad_h1, grad_h2, grad_y if ctx.has_shortcut else None) + (None,) * 7


def shake_shake(
    h1: torch.Tensor,
    h2: torch.Tensor,
    shortcut: Optional[torch.Tensor],
    forward_mode: str,
    backward_mode: str,
    level: str,
    training: bool,
    alpha: Optional[torch.Tensor],
    beta: Optional[torch.Tensor],
    rng_state: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """y = shortcut + alpha * h1 + (1 - alpha) * h2; backward scales the gradient by beta and 1 - beta (the
    `shake_shake` op, same noise): returns y and the RNG state used (zeros when nothing is drawn)."""
    if not _shake_shake_draws(forward_mode, backward_mode, training, alpha, beta):
        state = torch.zeros((2,), dtype=torch.int64, device=h1.device)
    elif rng_state is not None:
        state = rng_state.reshape(2).clone()
    elif torch.compiler.is_compiling() and h1.device.type == "cpu":
        # draw_state's random_ does not trace; in eager this reads the same random64() (randint over the full
        # range is random64 % (2^64 - 1) - 2^63: the sign flip undoes the shift). TODO(lead): fold into draw_state.
        seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=h1.device) ^ (-(2**63))
        state = torch.cat([seed, torch.zeros_like(seed)])
    else:
        state = draw_state(h1.device, 2)
    return _ShakeShake.apply(h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, state)
