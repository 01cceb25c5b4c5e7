"""ShakeDrop's Python side: the twin of csrc/args/shake_drop.cpp's checks (same messages, same exception
types) for the kernels written in Python (the Triton op, the fake kernel, the reference backend), the fake
kernels of `cifarops::shake_drop` (schema in csrc/ops.cpp; its autograd is C++), and the Triton op
`cifarops_triton::shake_drop` with its autograd formula. Its signature must equal the schema
(tests/test_build.py checks it).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from cifarops import _extension
from cifarops.ops.common import (
    PYTHON_CHECKS,
    check_nc_input,
    check_rng_state,
    check_same_device,
    check_tensor,
    dense_format,
)

OP = "cifarops.shake_drop"
STREAMS = 3  # Philox streams: the gate, alpha and beta
GATE_LEVELS = ("batch", "sample")
LEVELS = ("batch", "sample", "channel", "pixel")


def check_shortcut(h: torch.Tensor, shortcut: Optional[torch.Tensor], op: str = OP) -> None:
    """A shortcut has h's dtype, device, batch and spatial sizes, and at most h's channels."""
    if shortcut is None:
        return
    check_nc_input(shortcut, "shortcut", op)
    check_same_device(shortcut, h, "shortcut", op)
    if shortcut.dtype != h.dtype:
        raise TypeError(f"{op}: shortcut must have h's dtype {h.dtype}, got {shortcut.dtype}")
    if shortcut.dim() != h.dim() or shortcut.shape[0] != h.shape[0] or shortcut.shape[2:] != h.shape[2:]:
        raise ValueError(
            f"{op}: shortcut must match h in batch and spatial sizes, got {tuple(shortcut.shape)} for h {tuple(h.shape)}"
        )
    if shortcut.shape[1] > h.shape[1]:
        raise ValueError(f"{op}: shortcut has {shortcut.shape[1]} channels, more than h's {h.shape[1]}")


def check_hyper_parameters(p_drop, alpha_range, beta_range, gate_level, level) -> None:
    if not 0.0 <= p_drop <= 1.0:
        raise ValueError(f"{OP}: p_drop must be a number in [0, 1], got {p_drop}")
    for name, value in (("alpha_range", alpha_range), ("beta_range", beta_range)):
        if len(value) != 2:
            raise ValueError(f"{OP}: {name} must be a pair (low, high) of numbers, got {len(value)} values")
        if not value[0] <= value[1]:
            raise ValueError(f"{OP}: {name} must satisfy low <= high, got ({value[0]}, {value[1]})")
    if gate_level not in GATE_LEVELS:
        raise ValueError(f"{OP}: gate_level must be one of {GATE_LEVELS}, got {gate_level!r}")
    if level not in LEVELS:
        raise ValueError(f"{OP}: level must be one of {LEVELS}, got {level!r}")


def _check_floating_noise(t, h, name, h_name, op=OP):
    check_tensor(t, name, op)
    if not t.dtype.is_floating_point:
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    check_same_device(t, h, name, op, h_name)


def check_gate(h, gate, h_name="h", op=OP) -> None:
    """An explicit gate: (1,) or (N,), floating (ShakeDrop's and stochastic depth's)."""
    _check_floating_noise(gate, h, "gate", h_name, op)
    n = h.shape[0]
    if gate.dim() != 1 or gate.shape[0] not in (1, n):
        raise ValueError(f"{op}: gate must have shape (1,) or (N,) = ({n},), got {tuple(gate.shape)}")


def check_coefficient(h, coef, name, h_name="h") -> None:
    _check_floating_noise(coef, h, name, h_name)
    n, c = h.shape[0], h.shape[1]
    if tuple(coef.shape) not in ((1,), (n,), (n, c), tuple(h.shape)):
        raise ValueError(
            f"{OP}: {name} must have shape (1,), (N,) = ({n},), (N, C) = ({n}, {c}) or h's shape {tuple(h.shape)}, "
            f"got {tuple(coef.shape)}"
        )


def check_op_args(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, alpha, beta,
                  rng_state) -> None:
    """The Python twin of csrc/args/shake_drop.cpp's checks, in the same order."""
    check_hyper_parameters(p_drop, alpha_range, beta_range, gate_level, level)
    check_nc_input(h, "h", OP)
    check_shortcut(h, shortcut)
    if not training and (gate is not None or alpha is not None or beta is not None):
        raise ValueError(f"{OP}: gate, alpha and beta are training noise; pass training=True")
    if beta is not None:
        check_coefficient(h, beta, "beta")
    if rng_state is not None:
        check_rng_state(rng_state, h, "rng_state", OP)
    if training and gate is not None:
        check_gate(h, gate)
    if training and alpha is not None:
        check_coefficient(h, alpha, "alpha")


def check_backward_args(grad_y, rng_state, p_drop, alpha_range, beta_range, gate_level, level, training, gate,
                        beta) -> None:
    op = "cifarops._shake_drop_backward"
    check_hyper_parameters(p_drop, alpha_range, beta_range, gate_level, level)
    check_nc_input(grad_y, "grad_y", op)
    check_rng_state(rng_state, grad_y, "rng_state", op)
    if training and gate is not None:
        check_gate(grad_y, gate, "grad_y")
    if training and beta is not None:
        check_coefficient(grad_y, beta, "beta", "grad_y")


PYTHON_CHECKS["shake_drop"] = check_op_args
PYTHON_CHECKS["_shake_drop_backward"] = check_backward_args


def draws(training, gate, alpha, beta) -> bool:
    """Whether a call draws from the generator: in training, when any of its noise is not given."""
    return training and (gate is None or alpha is None or beta is None)


# ---------------------------------------------------------------------------------------------- Triton op


@torch.library.custom_op("cifarops_triton::shake_drop", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def triton_shake_drop(
    h: torch.Tensor,
    shortcut: Optional[torch.Tensor],
    p_drop: float,
    alpha_range: Sequence[float],
    beta_range: Sequence[float],
    gate_level: str,
    level: str,
    training: bool,
    gate: Optional[torch.Tensor],
    alpha: Optional[torch.Tensor],
    beta: Optional[torch.Tensor],
    rng_state: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    check_op_args(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, alpha, beta,
                  rng_state)
    from cifarops.triton_kernels.shake_drop import shake_drop_apply  # imports triton only when used

    if rng_state is None:
        from cifarops.philox import draw_state

        drawing = draws(training, gate, alpha, beta)
        rng_state = draw_state(h.device, STREAMS) if drawing else torch.zeros(2, dtype=torch.int64, device=h.device)
    else:
        rng_state = rng_state.clone()
    y = shake_drop_apply(h, shortcut, p_drop, alpha_range, alpha_range, gate_level, level, training, gate, alpha,
                         rng_state, stream=1)
    return y, rng_state


@torch.library.custom_op("cifarops_triton::_shake_drop_backward", mutates_args=())
def triton_shake_drop_backward(
    grad_y: torch.Tensor,
    rng_state: torch.Tensor,
    p_drop: float,
    alpha_range: Sequence[float],
    beta_range: Sequence[float],
    gate_level: str,
    level: str,
    training: bool,
    gate: Optional[torch.Tensor],
    beta: Optional[torch.Tensor],
) -> torch.Tensor:
    check_backward_args(grad_y, rng_state, p_drop, alpha_range, beta_range, gate_level, level, training, gate, beta)
    from cifarops.triton_kernels.shake_drop import shake_drop_apply

    return shake_drop_apply(grad_y, None, p_drop, alpha_range, beta_range, gate_level, level, training, gate, beta,
                            rng_state, stream=2)


# ------------------------------------------------------------------------------------- fake and autograd


def _fake_forward(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, alpha, beta,
                  rng_state):
    check_op_args(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, alpha, beta,
                  rng_state)
    return torch.empty_like(h, memory_format=dense_format(h)), h.new_empty((2,), dtype=torch.int64)


def _fake_backward(grad_y, rng_state, p_drop, alpha_range, beta_range, gate_level, level, training, gate, beta):
    check_backward_args(grad_y, rng_state, p_drop, alpha_range, beta_range, gate_level, level, training, gate, beta)
    return torch.empty_like(grad_y, memory_format=dense_format(grad_y))


def _register_triton_autograd() -> None:
    """The Triton ops' autograd (the compiled ops have theirs in C++, csrc/args/shake_drop.cpp)."""
    backward = torch.ops.cifarops_triton._shake_drop_backward.default

    def setup_forward(ctx, inputs, output):
        h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, _alpha, beta, _ = inputs
        ctx.save_for_backward(output[1], gate, beta)  # only the noise: never h, the shortcut or the output
        ctx.args = (p_drop, alpha_range, beta_range, gate_level, level, training)
        ctx.shortcut_channels = None if shortcut is None else shortcut.shape[1]
        ctx.channels = h.shape[1]
        ctx.mark_non_differentiable(output[1])

    def backward_forward(ctx, grad_y, _grad_state):
        state, gate, beta = ctx.saved_tensors
        grad_h = backward(grad_y, state, *ctx.args, gate, beta) if ctx.needs_input_grad[0] else None
        grad_shortcut = None
        if ctx.shortcut_channels is not None and ctx.needs_input_grad[1]:
            # dL/dx = dL/dy: the incoming gradient itself (a view when the shortcut is narrower), no copy.
            grad_shortcut = grad_y if ctx.shortcut_channels == ctx.channels else grad_y[:, : ctx.shortcut_channels]
        return (grad_h, grad_shortcut) + (None,) * 10

    def setup_backward(ctx, inputs, output):
        _grad_y, state, p_drop, alpha_range, beta_range, gate_level, level, training, gate, beta = inputs
        ctx.save_for_backward(state, gate, beta)
        ctx.args = (p_drop, alpha_range, beta_range, gate_level, level, training)

    def backward_backward(ctx, grad_grad_h):
        # The backward pass is linear in grad_y with the same coefficients: double backward for free.
        state, gate, beta = ctx.saved_tensors
        return (backward(grad_grad_h, state, *ctx.args, gate, beta),) + (None,) * 9

    torch.library.register_autograd(torch.ops.cifarops_triton.shake_drop.default, backward_forward,
                                    setup_context=setup_forward)
    torch.library.register_autograd(backward, backward_backward, setup_context=setup_backward)


for _namespace in (torch.ops.cifarops_triton,) + ((torch.ops.cifarops,) if _extension.LOADED else ()):
    torch.library.register_fake(_namespace.shake_drop.default)(_fake_forward)
    torch.library.register_fake(_namespace._shake_drop_backward.default)(_fake_backward)
_register_triton_autograd()
