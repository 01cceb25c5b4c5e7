"""ShakeDrop in pure PyTorch, argument for argument as its op (see the package's docstring)."""

from __future__ import annotations

import torch

from cifarops.philox import draw_state
from cifarops.reference.common import opmath_dtype, per_sample, uniform_at


def shake_drop_scale(gate: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """b + c - b*c, written b + (1 - b) c: exact for gates of 0 and 1 (same form as the kernels)."""
    return gate + (1 - gate) * coef


SHAKE_DROP_STREAMS = 3  # the gate, alpha and beta (csrc/include/cifarops/shake_drop.h)


_LEVEL_SHAPES = {"batch": lambda h: (1, 1), "sample": lambda h: (h.shape[0], 1),
                 "channel": lambda h: tuple(h.shape[:2]), "pixel": lambda h: tuple(h.shape)}


def _shake_drop_noise(h, p_drop, alpha_range, coef_range, gate_level, level, training, gate, coef, state, stream):
    """(gate, coefficient) broadcastable to h in the compute type: explicit, drawn from `state`, or evaluation's
    constants (gate 0, coefficient E[b + alpha - b alpha])."""
    acc = opmath_dtype(h.dtype)
    if not training:
        expected = (1.0 - p_drop) + p_drop * (alpha_range[0] + alpha_range[1]) / 2
        return torch.zeros((), dtype=acc, device=h.device), torch.full((), expected, dtype=acc, device=h.device)
    if gate is None:
        u = uniform_at(state, (1,) if gate_level == "batch" else (h.shape[0],), h, stream=0)
        gate = (u < 1.0 - p_drop).to(acc)  # compared in float32, as the kernels do (a Python scalar takes u's dtype)
    else:
        gate = per_sample(gate.to(acc).expand(h.shape[0]), h)
    if coef is None:
        # float32 bounds made on the device (a fill each, never a host-to-device copy)
        lo, hi = (torch.full((), float(v), dtype=torch.float32, device=h.device) for v in coef_range)
        coef = (lo + (hi - lo) * uniform_at(state, _LEVEL_SHAPES[level](h), h, stream)).to(acc)
    else:
        coef = coef.to(acc)
        if coef.dim() == 1:
            coef = per_sample(coef.expand(h.shape[0]), h)
        elif coef.dim() == 2 and h.dim() != 2:
            coef = coef.reshape(*coef.shape, *([1] * (h.dim() - 2)))
    return gate, coef


def _draws(training, *noise) -> bool:
    return training and any(t is None for t in noise)


def shake_drop_backward(grad_y, rng_state, p_drop, alpha_range, beta_range, gate_level, level, training, gate, beta):
    """grad_h = (b + beta - b * beta) * grad_y, the noise regenerated from rng_state (the `_shake_drop_backward` op)."""
    b, c = _shake_drop_noise(grad_y, p_drop, alpha_range, beta_range, gate_level, level, training, gate, beta,
                             rng_state, stream=2)
    scale = shake_drop_scale(b, c)
    return (grad_y.to(scale.dtype) * scale).to(grad_y.dtype)  # grad_y first: its layout, whatever the noise's


class _ShakeDrop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, alpha, beta,
                rng_state):
        b, c = _shake_drop_noise(h, p_drop, alpha_range, alpha_range, gate_level, level, training, gate, alpha,
                                 rng_state, stream=1)
        scale = shake_drop_scale(b, c)
        y = h.to(scale.dtype) * scale  # h first: the output keeps h's layout (channels_last) as the kernels'
        if shortcut is not None:
            y[:, : shortcut.shape[1]] += shortcut.to(scale.dtype)
        state = rng_state.clone()
        ctx.save_for_backward(state, gate, beta)
        ctx.args = (p_drop, alpha_range, beta_range, gate_level, level, training)
        ctx.shortcut_channels = None if shortcut is None else shortcut.shape[1]
        ctx.mark_non_differentiable(state)
        return y.to(h.dtype), state

    @staticmethod
    def backward(ctx, grad_y, _grad_state):
        state, gate, beta = ctx.saved_tensors
        p_drop, alpha_range, beta_range, gate_level, level, training = ctx.args
        grad_h = shake_drop_backward(grad_y, state, p_drop, alpha_range, beta_range, gate_level, level, training,
                                     gate, beta)
        grad_shortcut = None if ctx.shortcut_channels is None else grad_y[:, : ctx.shortcut_channels]
        return (grad_h, grad_shortcut) + (None,) * 10


def shake_drop(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, alpha, beta, rng_state):
    """The `shake_drop` op: y = shortcut + (b + alpha - b * alpha) * h; backward uses beta. Returns (y, rng_state).

    Training noise is drawn from `rng_state` (or, when None, from the state draw_state takes from torch's
    generator, as the compiled kernels do) unless given: gate (1,) or (N,); alpha, beta (1,), (N,), (N, C) or h's
    shape. Evaluation uses gate 0 and E[b + alpha - b alpha]. A shortcut with fewer channels than h is added to
    h's first channels (PyramidNet's zero padding).
    """
    if rng_state is None:
        draws = _draws(training, gate, alpha, beta)
        rng_state = draw_state(h.device, SHAKE_DROP_STREAMS) if draws else torch.zeros(2, dtype=torch.int64, device=h.device)
    return _ShakeDrop.apply(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, alpha,
                            beta, rng_state)
