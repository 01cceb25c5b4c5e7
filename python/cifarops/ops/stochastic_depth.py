"""Stochastic depth's Python side: the twin of csrc/args/stochastic_depth.cpp's checks (same messages, same
exception types) for the kernels written in Python, the fake kernels of `cifarops::stochastic_depth` (schema in
csrc/ops.cpp; its autograd is C++), and the Triton op `cifarops_triton::stochastic_depth` with its autograd
formula. Its signature must equal the schema (tests/test_build.py checks it).
"""

from __future__ import annotations

from typing import Optional

import torch

from cifarops import _extension
from cifarops.ops.common import PYTHON_CHECKS, check_nc_input, check_rng_state, dense_format
from cifarops.ops.shake_drop import check_shortcut, check_gate

OP = "cifarops.stochastic_depth"
BACKWARD_OP = "cifarops._stochastic_depth_backward"
STREAMS = 1  # Philox streams: the gate
MODES = ("row", "batch")


def check_hyper_parameters(p, mode, op: str = OP) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: p must be a number in [0, 1], got {p}")
    if mode not in MODES:
        raise ValueError(f"{op}: mode must be one of {MODES}, got {mode!r}")


def check_op_args(h, shortcut, p, mode, scale_by_keep, training, gate, rng_state) -> None:
    """The Python twin of csrc/args/stochastic_depth.cpp's checks, in the same order."""
    check_hyper_parameters(p, mode)
    check_nc_input(h, "h", OP)
    check_shortcut(h, shortcut, OP)
    if not training and gate is not None:
        raise ValueError(f"{OP}: gate is training noise; pass training=True")
    if rng_state is not None:
        check_rng_state(rng_state, h, "rng_state", OP)
    if training and gate is not None:
        check_gate(h, gate, op=OP)


def check_backward_args(grad_y, rng_state, p, mode, scale_by_keep, training, gate) -> None:
    check_hyper_parameters(p, mode, BACKWARD_OP)
    check_nc_input(grad_y, "grad_y", BACKWARD_OP)
    check_rng_state(rng_state, grad_y, "rng_state", BACKWARD_OP)
    if training and gate is not None:
        check_gate(grad_y, gate, "grad_y", op=BACKWARD_OP)


PYTHON_CHECKS["stochastic_depth"] = check_op_args
PYTHON_CHECKS["_stochastic_depth_backward"] = check_backward_args


# ---------------------------------------------------------------------------------------------- Triton op


@torch.library.custom_op("cifarops_triton::stochastic_depth", mutates_args=(),
                         tags=(torch.Tag.nondeterministic_seeded,))
def triton_stochastic_depth(
    h: torch.Tensor,
    shortcut: Optional[torch.Tensor],
    p: float,
    mode: str,
    scale_by_keep: bool,
    training: bool,
    gate: Optional[torch.Tensor],
    rng_state: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    check_op_args(h, shortcut, p, mode, scale_by_keep, training, gate, rng_state)
    from cifarops.triton_kernels.stochastic_depth import stochastic_depth_apply  # imports triton only when used

    if rng_state is None:
        from cifarops.philox import draw_state

        drawing = training and gate is None
        rng_state = draw_state(h.device, STREAMS) if drawing else torch.zeros(2, dtype=torch.int64, device=h.device)
    else:
        rng_state = rng_state.clone()
    return stochastic_depth_apply(h, shortcut, p, mode, scale_by_keep, training, gate, rng_state), rng_state


@torch.library.custom_op("cifarops_triton::_stochastic_depth_backward", mutates_args=())
def triton_stochastic_depth_backward(
    grad_y: torch.Tensor,
    rng_state: torch.Tensor,
    p: float,
    mode: str,
    scale_by_keep: bool,
    training: bool,
    gate: Optional[torch.Tensor],
) -> torch.Tensor:
    check_backward_args(grad_y, rng_state, p, mode, scale_by_keep, training, gate)
    from cifarops.triton_kernels.stochastic_depth import stochastic_depth_apply

    return stochastic_depth_apply(grad_y, None, p, mode, scale_by_keep, training, gate, rng_state)


# ------------------------------------------------------------------------------------- fake and autograd


def _fake_forward(h, shortcut, p, mode, scale_by_keep, training, gate, rng_state):
    check_op_args(h, shortcut, p, mode, scale_by_keep, training, gate, rng_state)
    return torch.empty_like(h, memory_format=dense_format(h)), h.new_empty((2,), dtype=torch.int64)


def _fake_backward(grad_y, rng_state, p, mode, scale_by_keep, training, gate):
    check_backward_args(grad_y, rng_state, p, mode, scale_by_keep, training, gate)
    return torch.empty_like(grad_y, memory_format=dense_format(grad_y))


def _register_triton_autograd() -> None:
    """The Triton ops' autograd (the compiled ops have theirs in C++, csrc/args/stochastic_depth.cpp)."""
    backward = torch.ops.cifarops_triton._stochastic_depth_backward.default

    def setup_forward(ctx, inputs, output):
        h, shortcut, p, mode, scale_by_keep, training, gate, _ = inputs
        ctx.save_for_backward(output[1], gate)  # only the noise: never h, the shortcut or the output
        ctx.args = (p, mode, scale_by_keep, training)
        ctx.shortcut_channels = None if shortcut is None else shortcut.shape[1]
        ctx.channels = h.shape[1]
        ctx.mark_non_differentiable(output[1])

    def backward_forward(ctx, grad_y, _grad_state):
        state, gate = ctx.saved_tensors
        grad_h = backward(grad_y, state, *ctx.args, gate) if ctx.needs_input_grad[0] else None
        grad_shortcut = None
        if ctx.shortcut_channels is not None and ctx.needs_input_grad[1]:
            # dL/dx = dL/dy: the incoming gradient itself (a view when the shortcut is narrower), no copy.
            grad_shortcut = grad_y if ctx.shortcut_channels == ctx.channels else grad_y[:, : ctx.shortcut_channels]
        return (grad_h, grad_shortcut) + (None,) * 6

    def setup_backward(ctx, inputs, output):
        _grad_y, state, p, mode, scale_by_keep, training, gate = inputs
        ctx.save_for_backward(state, gate)
        ctx.args = (p, mode, scale_by_keep, training)

    def backward_backward(ctx, grad_grad_h):
        # The backward pass is linear in grad_y with the same scale: double backward for free.
        state, gate = ctx.saved_tensors
        return (backward(grad_grad_h, state, *ctx.args, gate),) + (None,) * 6

    torch.library.register_autograd(torch.ops.cifarops_triton.stochastic_depth.default, backward_forward,
                                    setup_context=setup_forward)
    torch.library.register_autograd(backward, backward_backward, setup_context=setup_backward)


for _namespace in (torch.ops.cifarops_triton,) + ((torch.ops.cifarops,) if _extension.LOADED else ()):
    torch.library.register_fake(_namespace.stochastic_depth.default)(_fake_forward)
    torch.library.register_fake(_namespace._stochastic_depth_backward.default)(_fake_backward)
_register_triton_autograd()
