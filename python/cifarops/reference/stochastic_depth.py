"""Stochastic depth in pure PyTorch, argument for argument as its op (see the package's docstring)."""

from __future__ import annotations

import torch

from cifarops.philox import draw_state
from cifarops.reference.common import opmath_dtype, per_sample, uniform_at


def _stochastic_depth_scale(h, p, mode, scale_by_keep, training, gate, state):
    """b * s broadcastable to h in the compute type (SPEC.md): the gate drawn from `state` (stream 0, per sample
    for mode "row", once for "batch") or given, s = 1 / (1 - p) when scaled (0 at p = 1); evaluation's constant."""
    acc = opmath_dtype(h.dtype)
    if not training:
        return torch.full((), 1.0 if scale_by_keep else 1.0 - p, dtype=acc, device=h.device)
    if gate is None:
        u = uniform_at(state, (h.shape[0],) if mode == "row" else (1,), h, stream=0)
        gate = (u < 1.0 - p).to(acc)
    else:
        gate = per_sample(gate.to(acc).expand(h.shape[0]), h)
    s = (1.0 / (1.0 - p) if p < 1.0 else 0.0) if scale_by_keep else 1.0
    return gate * torch.full((), s, dtype=acc, device=h.device)


def stochastic_depth_backward(grad_y, rng_state, p, mode, scale_by_keep, training, gate):
    """grad_h = b * s * grad_y, the gate regenerated from rng_state (the `_stochastic_depth_backward` op)."""
    scale = _stochastic_depth_scale(grad_y, p, mode, scale_by_keep, training, gate, rng_state)
    return (grad_y.to(scale.dtype) * scale).to(grad_y.dtype)


class _StochasticDepth(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, shortcut, p, mode, scale_by_keep, training, gate, rng_state):
        scale = _stochastic_depth_scale(h, p, mode, scale_by_keep, training, gate, rng_state)
        y = h.to(scale.dtype) * scale
        if shortcut is not None:
            y[:, : shortcut.shape[1]] += shortcut.to(scale.dtype)
        state = rng_state.clone()
        ctx.save_for_backward(state, gate)
        ctx.args = (p, mode, scale_by_keep, training)
        ctx.shortcut_channels = None if shortcut is None else shortcut.shape[1]
        ctx.mark_non_differentiable(state)
        return y.to(h.dtype), state

    @staticmethod
    def backward(ctx, grad_y, _grad_state):
        state, gate = ctx.saved_tensors
        grad_h = stochastic_depth_backward(grad_y, state, *ctx.args, gate)
        grad_shortcut = None if ctx.shortcut_channels is None else grad_y[:, : ctx.shortcut_channels]
        return (grad_h, grad_shortcut) + (None,) * 6


def stochastic_depth(h, shortcut, p, mode, scale_by_keep, training, gate, rng_state):
    """The `stochastic_depth` op: y = shortcut + b * s * h (Huang et al.; timm's DropPath and torchvision's
    StochasticDepth when scaled). Returns (y, rng_state); the gate is drawn as for `shake_drop`'s."""
    if rng_state is None:
        draws = training and gate is None
        rng_state = draw_state(h.device, 1) if draws else torch.zeros(2, dtype=torch.int64, device=h.device)
    return _StochasticDepth.apply(h, shortcut, p, mode, scale_by_keep, training, gate, rng_state)
