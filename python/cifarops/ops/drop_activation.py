"""Drop-Activation's Python side: the twin of csrc/args/drop_activation.cpp's checks (same messages, same
exception types) for the kernels written in Python, the fake kernels of `cifarops::drop_activation` (schema in
csrc/ops.cpp; its autograd is C++), and the Triton op `cifarops_triton::drop_activation` with its autograd
formula. Its signature must equal the schema (tests/test_build.py checks it).
"""

from __future__ import annotations

from typing import Optional

import torch

from cifarops import _extension
from cifarops.ops.common import PYTHON_CHECKS, check_nc_input, check_rng_state, check_tensor, dense_format

OP = "cifarops.drop_activation"
BACKWARD_OP = "cifarops._drop_activation_backward"
STREAMS = 1  # Philox streams: the mask


def check_keep(keep, op: str = OP) -> None:
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"{op}: keep must be a number in [0, 1], got {keep}")


def check_mask(v, mask, training, name, op) -> None:
    if mask is None:
        return
    if not training:
        raise ValueError(f"{op}: mask is training noise; pass training=True")
    check_tensor(mask, "mask", op)
    if mask.dtype != torch.bool:
        raise TypeError(f"{op}: mask must be a bool tensor (True keeps the ReLU), got {mask.dtype}")
    if mask.device != v.device:
        raise ValueError(f"{op}: mask is on {mask.device} but {name} is on {v.device}")
    if mask.shape != v.shape:
        raise ValueError(f"{op}: mask must have {name}'s shape {tuple(v.shape)}, got {tuple(mask.shape)}")


def check_op_args(x, keep, training, mask, rng_state) -> None:
    """The Python twin of csrc/args/drop_activation.cpp's checks, in the same order."""
    check_keep(keep)
    check_nc_input(x, "x", OP)
    if rng_state is not None:
        check_rng_state(rng_state, x, "rng_state", OP)
    check_mask(x, mask, training, "x", OP)


def check_backward_args(grad_y, y, rng_state, keep, training, mask) -> None:
    check_keep(keep, BACKWARD_OP)
    check_nc_input(grad_y, "grad_y", BACKWARD_OP)
    check_tensor(y, "y", BACKWARD_OP)
    if y.dtype != grad_y.dtype:
        raise TypeError(f"{BACKWARD_OP}: y must have grad_y's dtype {grad_y.dtype}, got {y.dtype}")
    if y.shape != grad_y.shape or y.device != grad_y.device:
        raise ValueError(f"{BACKWARD_OP}: y must have grad_y's shape {tuple(grad_y.shape)} and device "
                         f"{grad_y.device}, got {tuple(y.shape)} on {y.device}")
    check_rng_state(rng_state, grad_y, "rng_state", BACKWARD_OP)
    check_mask(grad_y, mask, training, "grad_y", BACKWARD_OP)


PYTHON_CHECKS["drop_activation"] = check_op_args
PYTHON_CHECKS["_drop_activation_backward"] = check_backward_args


# ---------------------------------------------------------------------------------------------- Triton op


@torch.library.custom_op("cifarops_triton::drop_activation", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def triton_drop_activation(
    x: torch.Tensor, keep: float, training: bool, mask: Optional[torch.Tensor], rng_state: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    check_op_args(x, keep, training, mask, rng_state)
    from cifarops.triton_kernels.drop_activation import drop_activation_apply  # imports triton only when used

    if rng_state is None:
        from cifarops.philox import draw_state

        drawing = training and mask is None
        rng_state = draw_state(x.device, STREAMS) if drawing else torch.zeros(2, dtype=torch.int64, device=x.device)
    else:
        rng_state = rng_state.clone()
    return drop_activation_apply(x, None, keep, training, mask, rng_state), rng_state


@torch.library.custom_op("cifarops_triton::_drop_activation_backward", mutates_args=())
def triton_drop_activation_backward(
    grad_y: torch.Tensor, y: torch.Tensor, rng_state: torch.Tensor, keep: float, training: bool,
    mask: Optional[torch.Tensor],
) -> torch.Tensor:
    check_backward_args(grad_y, y, rng_state, keep, training, mask)
    from cifarops.triton_kernels.drop_activation import drop_activation_apply

    return drop_activation_apply(grad_y, y, keep, training, mask, rng_state)


# ------------------------------------------------------------------------------------- fake and autograd


def _fake_forward(x, keep, training, mask, rng_state):
    check_op_args(x, keep, training, mask, rng_state)
    return torch.empty_like(x, memory_format=dense_format(x)), x.new_empty((2,), dtype=torch.int64)


def _fake_backward(grad_y, y, rng_state, keep, training, mask):
    check_backward_args(grad_y, y, rng_state, keep, training, mask)
    return torch.empty_like(grad_y, memory_format=dense_format(grad_y))


def _register_triton_autograd() -> None:
    """The Triton ops' autograd (the compiled ops have theirs in C++, csrc/args/drop_activation.cpp)."""
    backward = torch.ops.cifarops_triton._drop_activation_backward.default

    def setup_forward(ctx, inputs, output):
        _x, keep, training, mask, _ = inputs
        ctx.save_for_backward(output[0], output[1], mask)  # the output and the noise: never x
        ctx.args = (keep, training)
        ctx.mark_non_differentiable(output[1])

    def backward_forward(ctx, grad_y, _grad_state):
        y, state, mask = ctx.saved_tensors
        return backward(grad_y, y, state, *ctx.args, mask), None, None, None, None

    def setup_backward(ctx, inputs, output):
        _grad_y, y, state, keep, training, mask = inputs
        ctx.save_for_backward(y, state, mask)
        ctx.args = (keep, training)

    def backward_backward(ctx, grad_grad_x):
        # Linear in grad_y with coefficients piecewise constant in y: itself, and nothing to y.
        y, state, mask = ctx.saved_tensors
        return backward(grad_grad_x, y, state, *ctx.args, mask), None, None, None, None, None

    torch.library.register_autograd(torch.ops.cifarops_triton.drop_activation.default, backward_forward,
                                    setup_context=setup_forward)
    torch.library.register_autograd(backward, backward_backward, setup_context=setup_backward)


for _namespace in (torch.ops.cifarops_triton,) + ((torch.ops.cifarops,) if _extension.LOADED else ()):
    torch.library.register_fake(_namespace.drop_activation.default)(_fake_forward)
    torch.library.register_fake(_namespace._drop_activation_backward.default)(_fake_backward)
_register_triton_autograd()
