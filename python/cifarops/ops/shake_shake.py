"""torch.library registrations for Shake-Shake: fake kernels for `cifarops::shake_shake` and
`cifarops::_shake_shake_backward` (schemas in csrc/ops.cpp; their autograd is C++, csrc/args/shake_shake.cpp),
and the Triton ops `cifarops_triton::*` with the same schemas, whose autograd is registered here.

The checks below are the Python twin of csrc/args/shake_shake.cpp's (same exception types and messages), for
the Triton op, the fake kernels and the reference path. They return where the coefficients come from.
"""

from __future__ import annotations

from typing import Optional

import torch

from cifarops import _extension
from cifarops.ops.common import check_choice, check_floating, check_nc_input, check_rng_state, check_same_device, dense_format

OP = "cifarops.shake_shake"
BACKWARD_OP = "cifarops._shake_shake_backward"
STREAMS = 2  # stream 0: alpha, stream 1: beta
FORWARD_MODES = ("shake", "even")
BACKWARD_MODES = ("shake", "even", "keep")
LEVELS = ("batch", "sample")


def check_like_h1(t, h1: torch.Tensor, name: str) -> None:
    """h2 and the shortcut have h1's dtype, device and shape."""
    check_nc_input(t, name, OP)
    check_same_device(t, h1, name, OP, ref_name="h1")
    if t.dtype != h1.dtype:
        raise TypeError(f"{OP}: {name} must have h1's dtype {h1.dtype}, got {t.dtype}")
    if t.shape != h1.shape:
        raise ValueError(f"{OP}: {name} must have h1's shape {tuple(h1.shape)}, got {tuple(t.shape)}")


def check_coefficient(coef, x: torch.Tensor, name: str, ref_name: str = "h1", op: str = OP) -> None:
    """An explicit coefficient: (1,) or (N,), any floating dtype, on the input's device."""
    check_floating(coef, name, op)
    check_same_device(coef, x, name, op, ref_name=ref_name)
    n = x.shape[0]
    if coef.dim() != 1 or coef.shape[0] not in (1, n):
        raise ValueError(f"{op}: {name} must have shape (1,) or (N,) = ({n},), got {tuple(coef.shape)}")


def draws(forward_mode: str, backward_mode: str, training: bool, alpha, beta) -> bool:
    """Whether a call takes an RNG state: alpha drawn, or beta drawn by its backward."""
    if not training:
        return False
    alpha_drawn = alpha is None and forward_mode == "shake"
    return alpha_drawn or (beta is None and (backward_mode == "shake" or (backward_mode == "keep" and alpha_drawn)))


def check_op_args(h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, rng_state) -> bool:
    """The Python twin of shake_shake_forward_call's checks; returns whether the call draws."""
    check_choice(forward_mode, "forward_mode", FORWARD_MODES, OP)
    check_choice(backward_mode, "backward_mode", BACKWARD_MODES, OP)
    check_choice(level, "level", LEVELS, OP)
    check_nc_input(h1, "h1", OP)
    check_like_h1(h2, h1, "h2")
    if shortcut is not None:
        check_like_h1(shortcut, h1, "shortcut")
    if alpha is not None:
        check_coefficient(alpha, h1, "alpha")
    if beta is not None:
        check_coefficient(beta, h1, "beta")
    if not training and (alpha is not None or beta is not None):
        raise ValueError(f"{OP}: alpha and beta are training noise; pass training=True")
    if rng_state is not None:
        check_rng_state(rng_state, h1, "rng_state", OP)
    return draws(forward_mode, backward_mode, training, alpha, beta)


def check_backward_args(grad_y, rng_state, beta, backward_mode, level) -> None:
    check_choice(backward_mode, "backward_mode", BACKWARD_MODES, BACKWARD_OP)
    check_choice(level, "level", LEVELS, BACKWARD_OP)
    check_nc_input(grad_y, "grad_y", BACKWARD_OP)
    check_rng_state(rng_state, grad_y, "rng_state", BACKWARD_OP)
    if beta is not None:
        check_coefficient(beta, grad_y, "beta", "grad_y", BACKWARD_OP)


def beta_source(forward_mode, backward_mode, training, alpha, beta):
    """(explicit beta or None, backward op mode), as csrc/args/shake_shake.cpp's beta_source."""
    if not training:
        return None, "even"
    if beta is not None:
        return beta, "even"
    if backward_mode == "keep":
        if alpha is not None:
            return alpha, "even"
        return None, "keep" if forward_mode == "shake" else "even"
    return None, backward_mode


@torch.library.custom_op("cifarops_triton::shake_shake", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def triton_shake_shake(
    h1: torch.Tensor, h2: torch.Tensor, shortcut: Optional[torch.Tensor], forward_mode: str, backward_mode: str,
    level: str, training: bool, alpha: Optional[torch.Tensor], beta: Optional[torch.Tensor],
    rng_state: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    drawing = check_op_args(h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, rng_state)
    from cifarops.triton_kernels.shake_shake import shake_shake_fwd

    return shake_shake_fwd(h1, h2, shortcut, forward_mode, level, training, alpha, rng_state, drawing)


@torch.library.custom_op("cifarops_triton::_shake_shake_backward", mutates_args=())
def triton_shake_shake_backward(
    grad_y: torch.Tensor, rng_state: torch.Tensor, beta: Optional[torch.Tensor], backward_mode: str, level: str
) -> tuple[torch.Tensor, torch.Tensor]:
    check_backward_args(grad_y, rng_state, beta, backward_mode, level)
    from cifarops.triton_kernels.shake_shake import shake_shake_bwd

    return shake_shake_bwd(grad_y, rng_state, beta, backward_mode, level)


def _fake_forward(h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, rng_state):
    check_op_args(h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, rng_state)
    return torch.empty_like(h1, memory_format=dense_format(h1)), h1.new_empty((2,), dtype=torch.int64)


def _fake_backward(grad_y, rng_state, beta, backward_mode, level):
    check_backward_args(grad_y, rng_state, beta, backward_mode, level)
    fmt = dense_format(grad_y)
    return torch.empty_like(grad_y, memory_format=fmt), torch.empty_like(grad_y, memory_format=fmt)


def _register_triton_autograd(namespace) -> None:
    """Autograd of the Triton ops (the cifarops:: ops have theirs in C++, csrc/args/shake_shake.cpp)."""
    forward, backward = namespace.shake_shake.default, namespace._shake_shake_backward.default

    def setup_forward(ctx, inputs, output):
        _h1, _h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, _state = inputs
        explicit_beta, mode = beta_source(forward_mode, backward_mode, training, alpha, beta)
        ctx.save_for_backward(output[1], explicit_beta)  # the state and coefficients only: never h1, h2, x
        ctx.mode, ctx.level, ctx.has_shortcut = mode, level, shortcut is not None
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)

    def backward_forward(ctx, grad_y, _grad_state):
        if grad_y is None:
            return (None,) * 10
        state, explicit_beta = ctx.saved_tensors
        grad_h1 = grad_h2 = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_h1, grad_h2 = backward(grad_y, state, explicit_beta, ctx.mode, ctx.level)
        # dL/dx = dL/dy: the incoming gradient itself, no copy.
        return grad_h1, grad_h2, grad_y if ctx.has_shortcut else None, None, None, None, None, None, None, None

    def setup_backward(ctx, inputs, output):
        _grad_y, state, beta, mode, level = inputs
        ctx.save_for_backward(state, beta)
        ctx.mode, ctx.level = mode, level

    def backward_backward(ctx, grad_grad_h1, grad_grad_h2):
        # The backward is linear in grad_y: its own gradient is the forward mix with beta as alpha. A drawn beta
        # is alpha's draw under a state whose stream 0 is beta's stream (stream 1 = stream 0 at offset + 4).
        state, beta = ctx.saved_tensors
        if grad_grad_h1 is None and grad_grad_h2 is None:
            return None, None, None, None, None
        if grad_grad_h1 is None:
            grad_grad_h1 = torch.zeros_like(grad_grad_h2)
        if grad_grad_h2 is None:
            grad_grad_h2 = torch.zeros_like(grad_grad_h1)
        forward_mode, alpha_state = "even", None
        if beta is None and ctx.mode != "even":
            forward_mode = "shake"
            alpha_state = state if ctx.mode == "keep" else torch.cat([state[:1], state[1:] + 4])
        y, _ = forward(grad_grad_h1, grad_grad_h2, None, forward_mode, "even", ctx.level, True, beta, None, alpha_state)
        return y, None, None, None, None

    torch.library.register_autograd(forward, backward_forward, setup_context=setup_forward)
    torch.library.register_autograd(backward, backward_backward, setup_context=setup_backward)


for _namespace in [torch.ops.cifarops_triton] + ([torch.ops.cifarops] if _extension.LOADED else []):
    torch.library.register_fake(_namespace.shake_shake.default)(_fake_forward)
    torch.library.register_fake(_namespace._shake_shake_backward.default)(_fake_backward)
_register_triton_autograd(torch.ops.cifarops_triton)
