"""torch.library registrations for Shake-Shake: fake and autograd formulas for `cifarops::shake_shake`
(schema in csrc/ops.cpp) and the Triton op `cifarops_triton::shake_shake` with the same schema."""

from __future__ import annotations

from typing import Optional

import torch

from cifarops import _extension
from cifarops.ops.common import check_nc_input, check_same_device, dense_format, opmath_dtype

OP = "cifarops.shake_shake"


def check_like_h1(t, h1: torch.Tensor, name: str) -> None:
    """h2 and the shortcut have h1's dtype, device and shape."""
    check_nc_input(t, name, OP)
    check_same_device(t, h1, name, OP, ref_name="h1")
    if t.dtype != h1.dtype:
        raise TypeError(f"{OP}: {name} must have h1's dtype {h1.dtype}, got {t.dtype}")
    if t.shape != h1.shape:
        raise ValueError(f"{OP}: {name} must have h1's shape {tuple(h1.shape)}, got {tuple(t.shape)}")


def _check_coefficient(coef, x, name, op=OP):
    check_same_device(coef, x, name, op, ref_name="the input")
    if coef.dtype != opmath_dtype(x.dtype):
        raise TypeError(f"{op}: {name} must be {opmath_dtype(x.dtype)} for {x.dtype} input, got {coef.dtype}")
    if coef.dim() != 1 or coef.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: {name} must have shape (N,) = ({x.shape[0]},), got {tuple(coef.shape)}")


def check_op_args(h1, h2, shortcut, alpha, beta) -> None:
    """The Python twin of csrc/args/shake_shake.cpp's checks, for the Triton op and the fake kernel."""
    check_nc_input(h1, "h1", OP)
    check_like_h1(h2, h1, "h2")
    if shortcut is not None:
        check_like_h1(shortcut, h1, "shortcut")
    _check_coefficient(alpha, h1, "alpha")
    _check_coefficient(beta, h1, "beta")


def check_backward_args(grad_y, beta) -> None:
    check_nc_input(grad_y, "grad_y", "cifarops._shake_shake_backward")
    _check_coefficient(beta, grad_y, "beta", "cifarops._shake_shake_backward")


@torch.library.custom_op("cifarops_triton::shake_shake", mutates_args=())
def triton_shake_shake(
    h1: torch.Tensor, h2: torch.Tensor, shortcut: Optional[torch.Tensor], alpha: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    check_op_args(h1, h2, shortcut, alpha, beta)
    from cifarops.triton_kernels.shake_shake import shake_shake_fwd

    return shake_shake_fwd(h1, h2, shortcut, alpha)


@torch.library.custom_op("cifarops_triton::_shake_shake_backward", mutates_args=())
def triton_shake_shake_backward(grad_y: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_backward_args(grad_y, beta)
    from cifarops.triton_kernels.shake_shake import shake_shake_bwd

    return shake_shake_bwd(grad_y, beta)


def _fake_forward(h1, h2, shortcut, alpha, beta):
    check_op_args(h1, h2, shortcut, alpha, beta)
    return torch.empty_like(h1, memory_format=dense_format(h1))


def _fake_backward(grad_y, beta):
    check_backward_args(grad_y, beta)
    fmt = dense_format(grad_y)
    return torch.empty_like(grad_y, memory_format=fmt), torch.empty_like(grad_y, memory_format=fmt)


def _register(namespace) -> None:
    forward, backward = namespace.shake_shake.default, namespace._shake_shake_backward.default

    def setup_forward(ctx, inputs, output):
        _h1, _h2, shortcut, _alpha, beta = inputs
        ctx.save_for_backward(beta)  # the per-sample coefficients only: never h1, h2 or the shortcut
        ctx.has_shortcut = shortcut is not None

    def backward_forward(ctx, grad_y):
        (beta,) = ctx.saved_tensors
        grad_h1 = grad_h2 = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_h1, grad_h2 = backward(grad_y, beta)
        # dL/dx = dL/dy: the incoming gradient itself, no copy.
        return grad_h1, grad_h2, grad_y if ctx.has_shortcut else None, None, None

    def setup_backward(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    def backward_backward(ctx, grad_grad_h1, grad_grad_h2):
        # The backward is linear in grad_y: its own gradient is the forward mix with beta.
        (beta,) = ctx.saved_tensors
        if grad_grad_h1 is None:
            grad_grad_h1 = torch.zeros_like(grad_grad_h2)
        if grad_grad_h2 is None:
            grad_grad_h2 = torch.zeros_like(grad_grad_h1)
        return forward(grad_grad_h1, grad_grad_h2, None, beta, beta), None

    torch.library.register_fake(forward)(_fake_forward)
    torch.library.register_fake(backward)(_fake_backward)
    torch.library.register_autograd(forward, backward_forward, setup_context=setup_forward)
    torch.library.register_autograd(backward, backward_backward, setup_context=setup_backward)


_register(torch.ops.cifarops_triton)
if _extension.LOADED:
    _register(torch.ops.cifarops)
