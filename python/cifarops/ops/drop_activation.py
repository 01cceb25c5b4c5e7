"""Drop-Activation's Python side: the twin of csrc/args/drop_activation.cpp's checks (same messages, same
exception types) for the kernels written in Python, the fake kernels of `cifarops::drop_activation` and of its
in-place form `drop_activation_` (schemas in csrc/ops.cpp; their autograd is C++), and the Triton ops
`cifarops_triton::drop_activation(_)` with their autograd. Signatures must equal the schemas (tests/test_build.py
checks them).
"""

from __future__ import annotations

from typing import Optional

import torch

from cifarops import _extension
from cifarops.ops.common import PYTHON_CHECKS, check_nc_input, check_rng_state, check_tensor, dense_format

OP = "cifarops.drop_activation"
INPLACE_OP = "cifarops.drop_activation_"
INPLACE_SCHEMA = "(Tensor(a!) x, float keep, bool training, Tensor? mask, Tensor? rng_state) -> Tensor"  # csrc/ops.cpp
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


def check_op_args(x, keep, training, mask, rng_state, op: str = OP) -> None:
    """The Python twin of csrc/args/drop_activation.cpp's checks, in the same order."""
    check_keep(keep, op)
    check_nc_input(x, "x", op)
    if op == INPLACE_OP and torch._debug_has_internal_overlap(x) == 1:
        raise ValueError(f"{op}: x has elements that share memory (an expanded tensor); the in-place form cannot "
                         "write it")
    if rng_state is not None:
        check_rng_state(rng_state, x, "rng_state", op)
    check_mask(x, mask, training, "x", op)


def check_inplace_args(x, keep, training, mask, rng_state) -> None:
    check_op_args(x, keep, training, mask, rng_state, INPLACE_OP)


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
PYTHON_CHECKS["drop_activation_"] = check_inplace_args
PYTHON_CHECKS["_drop_activation_backward"] = check_backward_args


# ---------------------------------------------------------------------------------------------- Triton op


@torch.library.custom_op("cifarops_triton::drop_activation", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def triton_drop_activation(
    x: torch.Tensor, keep: float, training: bool, mask: Optional[torch.Tensor], rng_state: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    check_op_args(x, keep, training, mask, rng_state)
    from cifarops.triton_kernels.drop_activation import drop_activation_apply  # imports triton only when used

    rng_state = _call_state(x, training, mask, rng_state)
    return drop_activation_apply(x, None, keep, training, mask, rng_state), rng_state


def _call_state(x, training, mask, rng_state):
    """The state a call uses: a copy of the explicit one, else the generator's (drawing) or zeros."""
    if rng_state is not None:
        return rng_state.clone()
    from cifarops.philox import draw_state

    drawing = training and mask is None
    return draw_state(x.device, STREAMS) if drawing else torch.zeros(2, dtype=torch.int64, device=x.device)


# The in-place form, defined by its schema rather than with custom_op, which cannot give a mutating op an autograd
# formula. Its kernels are those of torch's own in-place ops, key by key: Autograd (the twin of the C++ one:
# torch.autograd.Function's mark_dirty makes the node x's history), ADInplaceOrView (bumps x's version), then the
# device kernel, which writes x.
_LIB = torch.library.Library("cifarops_triton", "FRAGMENT")
_LIB.define("drop_activation_" + INPLACE_SCHEMA, tags=(torch.Tag.nondeterministic_seeded,))
_INPLACE = torch.ops.cifarops_triton.drop_activation_.default


def _triton_inplace_kernel(x, keep, training, mask, rng_state):
    check_inplace_args(x, keep, training, mask, rng_state)
    from cifarops.triton_kernels.drop_activation import drop_activation_apply

    rng_state = _call_state(x, training, mask, rng_state)
    drop_activation_apply(x, None, keep, training, mask, rng_state, in_place=True)
    return rng_state


def _version_bump(keyset, x, *args):
    torch.autograd.graph.increment_version(x)
    return _INPLACE.redispatch(keyset & torch._C._after_ADInplaceOrView_keyset, x, *args)


class _TritonInplace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep, training, mask, rng_state, below, states):
        with torch._C._AutoDispatchBelowAutograd():
            state = _INPLACE.redispatch(below, x, keep, training, mask, rng_state)
        states.append(state)  # the op's output: a Function that writes a view may return only that view
        ctx.mark_dirty(x)
        ctx.save_for_backward(x, state, mask)  # x is now the output
        ctx.args = (keep, training)
        return x

    @staticmethod
    def backward(ctx, grad_y):
        y, state, mask = ctx.saved_tensors
        grad_x = torch.ops.cifarops_triton._drop_activation_backward(grad_y, y, state, *ctx.args, mask)
        return grad_x, None, None, None, None, None, None


def _triton_inplace_autograd(keyset, x, keep, training, mask, rng_state):
    below = keyset & torch._C._after_autograd_keyset
    if not (torch.is_grad_enabled() and x.requires_grad):
        with torch._C._AutoDispatchBelowAutograd():
            return _INPLACE.redispatch(below, x, keep, training, mask, rng_state)
    # torch's own checks, before x is written (mark_dirty would make them after)
    if x.is_leaf:
        raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
    if x._is_view() and x._base.is_leaf:
        raise RuntimeError("a view of a leaf Variable that requires grad is being used in an in-place operation.")
    states = []
    _TritonInplace.apply(x, keep, training, mask, rng_state, below, states)
    return states[0]


for _key in ("CPU", "CUDA"):
    _LIB.impl("drop_activation_", _triton_inplace_kernel, _key)
_LIB.impl("drop_activation_", _version_bump, "ADInplaceOrView", with_keyset=True)
_LIB.impl("drop_activation_", _triton_inplace_autograd, "Autograd", with_keyset=True)


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


def _fake_inplace(x, keep, training, mask, rng_state):
    check_inplace_args(x, keep, training, mask, rng_state)
    return x.new_empty((2,), dtype=torch.int64)


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
    torch.library.register_fake(_namespace.drop_activation_.default)(_fake_inplace)
    torch.library.register_fake(_namespace._drop_activation_backward.default)(_fake_backward)
_register_triton_autograd()
