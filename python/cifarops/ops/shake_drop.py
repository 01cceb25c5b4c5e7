"""torch.library registrations for ShakeDrop: fake (meta) and autograd formulas for the compiled op
`cifarops::shake_drop` (schema in csrc/ops.cpp), and the Triton op `cifarops_triton::shake_drop`, whose
signature must equal that schema (tests/test_build.py checks it).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from cifarops import _extension
from cifarops.ops.common import check_nc_input, check_same_device, dense_format, opmath_dtype

OP = "cifarops.shake_drop"


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


def _check_coefficient(h, coef, name, seed, coef_range, op=OP):
    if len(coef_range) != 2:
        raise ValueError(f"{op}: {name}_range must have two values, got {list(coef_range)}")
    if coef is None:
        if seed is None:
            raise ValueError(f"{op}: {name} is None, so seed is required for Philox noise")
        check_same_device(seed, h, "seed", op)
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise TypeError(f"{op}: seed must be an int64 tensor of one element, got {seed.dtype} {tuple(seed.shape)}")
        return
    check_same_device(coef, h, name, op)
    if coef.dtype != opmath_dtype(h.dtype):
        raise TypeError(f"{op}: {name} must be {opmath_dtype(h.dtype)} for {h.dtype} input, got {coef.dtype}")
    if tuple(coef.shape) not in (tuple(h.shape[:2]), tuple(h.shape)):
        raise ValueError(
            f"{op}: {name} must have shape (N, C) = {tuple(h.shape[:2])} or h's shape {tuple(h.shape)}, "
            f"got {tuple(coef.shape)}"
        )


def _check_gate(h, gate, op=OP, h_name="h"):
    check_same_device(gate, h, "gate", op, h_name)
    if gate.dtype != opmath_dtype(h.dtype):
        raise TypeError(f"{op}: gate must be {opmath_dtype(h.dtype)} for {h.dtype} input, got {gate.dtype}")
    if gate.dim() != 1 or gate.shape[0] != h.shape[0]:
        raise ValueError(f"{op}: gate must have shape (N,) = ({h.shape[0]},), got {tuple(gate.shape)}")


def check_op_args(h, shortcut, gate, alpha, beta, seed, alpha_range, beta_range) -> None:
    """The Python twin of csrc/args/shake_drop.cpp's checks, for the Triton op and the fake kernel."""
    check_nc_input(h, "h", OP)
    check_shortcut(h, shortcut)
    _check_gate(h, gate)
    _check_coefficient(h, alpha, "alpha", seed, alpha_range)
    _check_coefficient(h, beta, "beta", seed, beta_range)


def check_backward_args(grad_y, gate, beta, seed, beta_range) -> None:
    op = "cifarops._shake_drop_backward"
    check_nc_input(grad_y, "grad_y", op)
    _check_gate(grad_y, gate, op, "grad_y")
    _check_coefficient(grad_y, beta, "beta", seed, beta_range, op)


# ---------------------------------------------------------------------------------------------- Triton op


@torch.library.custom_op("cifarops_triton::shake_drop", mutates_args=())
def triton_shake_drop(
    h: torch.Tensor,
    shortcut: Optional[torch.Tensor],
    gate: torch.Tensor,
    alpha: Optional[torch.Tensor],
    beta: Optional[torch.Tensor],
    seed: Optional[torch.Tensor],
    alpha_range: Sequence[float],
    beta_range: Sequence[float],
) -> torch.Tensor:
    check_op_args(h, shortcut, gate, alpha, beta, seed, alpha_range, beta_range)
    from cifarops.triton_kernels.shake_drop import shake_drop_apply  # imports triton only when used

    return shake_drop_apply(h, shortcut, gate, alpha, seed, alpha_range, stream=0)


@torch.library.custom_op("cifarops_triton::_shake_drop_backward", mutates_args=())
def triton_shake_drop_backward(
    grad_y: torch.Tensor,
    gate: torch.Tensor,
    beta: Optional[torch.Tensor],
    seed: Optional[torch.Tensor],
    beta_range: Sequence[float],
) -> torch.Tensor:
    check_backward_args(grad_y, gate, beta, seed, beta_range)
    from cifarops.triton_kernels.shake_drop import shake_drop_apply

    return shake_drop_apply(grad_y, None, gate, beta, seed, beta_range, stream=1)


# ------------------------------------------------------------------------------------- fake and autograd


def _fake_forward(h, shortcut, gate, alpha, beta, seed, alpha_range, beta_range):
    check_op_args(h, shortcut, gate, alpha, beta, seed, alpha_range, beta_range)
    return torch.empty_like(h, memory_format=dense_format(h))


def _fake_backward(grad_y, gate, beta, seed, beta_range):
    check_backward_args(grad_y, gate, beta, seed, beta_range)
    return torch.empty_like(grad_y, memory_format=dense_format(grad_y))


def _register(namespace) -> None:
    """Fake kernels and autograd formulas for one namespace's pair of ops."""
    forward, backward = namespace.shake_drop.default, namespace._shake_drop_backward.default

    def setup_forward(ctx, inputs, output):
        h, shortcut, gate, _alpha, beta, seed, _alpha_range, beta_range = inputs
        # Only the noise is saved: never h, the shortcut or the output.
        ctx.save_for_backward(gate, beta, seed)
        ctx.beta_range = beta_range
        ctx.shortcut_channels = None if shortcut is None else shortcut.shape[1]
        ctx.channels = h.shape[1]

    def backward_forward(ctx, grad_y):
        gate, beta, seed = ctx.saved_tensors
        grad_h = backward(grad_y, gate, beta, seed, ctx.beta_range) if ctx.needs_input_grad[0] else None
        grad_shortcut = None
        if ctx.shortcut_channels is not None and ctx.needs_input_grad[1]:
            # dL/dx = dL/dy: the incoming gradient itself (a view when the shortcut is narrower), no copy.
            grad_shortcut = grad_y if ctx.shortcut_channels == ctx.channels else grad_y[:, : ctx.shortcut_channels]
        return grad_h, grad_shortcut, None, None, None, None, None, None

    def setup_backward(ctx, inputs, output):
        _grad_y, gate, beta, seed, beta_range = inputs
        ctx.save_for_backward(gate, beta, seed)
        ctx.beta_range = beta_range

    def backward_backward(ctx, grad_grad_h):
        # The backward pass is linear in grad_y with the same coefficients: double backward for free.
        gate, beta, seed = ctx.saved_tensors
        return backward(grad_grad_h, gate, beta, seed, ctx.beta_range), None, None, None, None

    torch.library.register_fake(forward)(_fake_forward)
    torch.library.register_fake(backward)(_fake_backward)
    torch.library.register_autograd(forward, backward_forward, setup_context=setup_forward)
    torch.library.register_autograd(backward, backward_backward, setup_context=setup_backward)


_register(torch.ops.cifarops_triton)
if _extension.LOADED:
    _register(torch.ops.cifarops)
