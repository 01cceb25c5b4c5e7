"""Drop-Activation in pure PyTorch, argument for argument as its op (see the package's docstring)."""

from __future__ import annotations

import torch

from cifarops.philox import draw_state, philox_uniform_range
from cifarops.reference.common import opmath_dtype


def _drop_activation_kept(v, keep, training, mask, state):
    """The mask (True: the ReLU is kept), shaped like v: u(NCHW index, stream 0) < keep, or the given one."""
    if mask is not None:
        return mask
    u = philox_uniform_range(state, v.numel(), 0, v.device).reshape(v.shape)  # the NCHW order, whatever v's layout
    return u < keep  # float32 u against keep as float32, as the kernels


def drop_activation_backward(grad_y, y, rng_state, keep, training, mask):
    """grad_x from grad_y and the output y (the `_drop_activation_backward` op): training passes grad_y where
    y != 0 or the ReLU was dropped; evaluation scales it by 1 - keep where y <= 0."""
    acc = opmath_dtype(grad_y.dtype)
    g, yy = grad_y.to(acc), y.to(acc)
    if training:
        kept = _drop_activation_kept(grad_y, keep, training, mask, rng_state)
        return torch.where((yy != 0) | ~kept, g, torch.zeros((), dtype=acc, device=g.device)).to(grad_y.dtype)
    slope = torch.full((), 1.0 - keep, dtype=acc, device=g.device)
    return torch.where(yy > 0, g, slope * g).to(grad_y.dtype)


class _DropActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep, training, mask, rng_state):
        acc = opmath_dtype(x.dtype)
        v = x.to(acc)
        if training:
            kept = _drop_activation_kept(x, keep, training, mask, rng_state)
            y = torch.where(kept & (v < 0), torch.zeros((), dtype=acc, device=x.device), v)
        else:
            y = torch.where(v < 0, torch.full((), 1.0 - keep, dtype=acc, device=x.device) * v, v)
        y = y.to(x.dtype)
        state = rng_state.clone()
        ctx.save_for_backward(y, state, mask)
        ctx.args = (keep, training)
        ctx.mark_non_differentiable(state)
        return y, state

    @staticmethod
    def backward(ctx, grad_y, _grad_state):
        y, state, mask = ctx.saved_tensors
        return drop_activation_backward(grad_y, y, state, *ctx.args, mask), None, None, None, None


def drop_activation(x, keep, training, mask, rng_state):
    """The `drop_activation` op (Liang, Khoo & Yang): y = m ? relu(x) : x with m ~ Bernoulli(keep) per element in
    training, the leaky ReLU of slope 1 - keep in evaluation. Returns (y, rng_state)."""
    if rng_state is None:
        draws = training and mask is None
        rng_state = draw_state(x.device, 1) if draws else torch.zeros(2, dtype=torch.int64, device=x.device)
    return _DropActivation.apply(x, keep, training, mask, rng_state)


def drop_activation_(x, keep, training, mask, rng_state):
    """The `drop_activation_` op: the same, written into x (through copy_, whose autograd passes the gradient to
    the computed y). Returns the state."""
    y, state = drop_activation(x, keep, training, mask, rng_state)
    x.copy_(y)
    return state
