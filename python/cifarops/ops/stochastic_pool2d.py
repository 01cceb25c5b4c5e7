"""Stochastic pooling's Python side: the twin of csrc/args/stochastic_pool2d.cpp's checks (same rules, same exception
types, the argument named) for the kernels written in Python, the fake kernels of the compiled ops (schemas in
csrc/ops.cpp; their autograd is C++), and the Triton ops `cifarops_triton::*` with the same schemas and their
autograd. Saved for backward: the drawn offset of each output, one byte (training), or x (evaluation)."""

from __future__ import annotations

from typing import Optional

import torch

from cifarops import _extension
from cifarops.ops.common import PYTHON_CHECKS, check_nc_input, check_rng_state, check_same_device, check_tensor, dense_format

OP = "cifarops.stochastic_pool2d"
BACKWARD_OP = "cifarops._stochastic_pool2d_backward"
EXPECTATION_BACKWARD_OP = "cifarops._stochastic_pool2d_expectation_backward"
STREAMS = 1  # Philox streams: one uniform per output
NO_CHOICE = 255
SECOND_DERIVATIVE = (f"{OP}: the second derivative of evaluation's weighting (double backward through training=False) "
                     "is not implemented; the training form has one")

# Written out because inference from Python hints would make the ints SymInt; tests/test_build.py checks that they
# equal csrc/ops.cpp's.
_POOL = "int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode"
SCHEMAS = {
    "stochastic_pool2d": f"(Tensor x, {_POOL}, Tensor? uniforms, Tensor? rng_state) -> (Tensor, Tensor, Tensor)",
    "_stochastic_pool2d_backward": f"(Tensor grad_y, Tensor offset, SymInt[] input_size, {_POOL}) -> Tensor",
    "stochastic_pool2d_expectation": f"(Tensor x, {_POOL}) -> Tensor",
    "_stochastic_pool2d_expectation_backward": f"(Tensor grad_y, Tensor x, {_POOL}) -> Tensor",
}


def pair(value, name: str, op: str) -> tuple[int, int]:
    """An int or a pair of ints (height, width), as max_pool2d takes them."""
    integer = (int, torch.SymInt)
    values = (value, value) if isinstance(value, integer) and not isinstance(value, bool) else value
    try:
        h, w = values
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {name} must be a pair (height, width), got {value!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, integer) for v in (h, w)):
        raise TypeError(f"{op}: {name} must hold ints, got {value!r}")
    return h, w


def output_size(size, kernel: int, stride: int, padding: int, ceil_mode: bool):
    """max_pool2d's output size (0 where not even one window fits)."""
    numerator = size + 2 * padding - kernel + (stride - 1 if ceil_mode else 0)
    if numerator < 0:
        return 0
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def check_pool_args(height, width, kernel_size, stride, padding, ceil_mode, input_name: str, op: str) -> tuple:
    """Checks the pooling's sizes; returns (kernel, stride, padding, output size) as pairs."""
    kernel, stride, padding = (pair(v, n, op) for v, n in ((kernel_size, "kernel_size"), (stride, "stride"),
                                                            (padding, "padding")))
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"{op}: ceil_mode must be a bool, got {type(ceil_mode).__name__}")
    if min(kernel) < 1:
        raise ValueError(f"{op}: kernel_size must be positive, got {kernel}")
    if kernel[0] * kernel[1] > 255:
        raise ValueError(f"{op}: kernel_size {kernel} has more than 255 elements (the drawn offset is stored in a byte)")
    if min(stride) < 1 or max(stride) >= 2**31:
        raise ValueError(f"{op}: stride must be positive and below 2^31, got {stride}")
    if min(padding) < 0 or 2 * padding[0] > kernel[0] or 2 * padding[1] > kernel[1]:
        raise ValueError(f"{op}: padding {padding} must be non-negative and at most half of kernel_size {kernel}")
    if height < 1 or width < 1:
        raise ValueError(f"{op}: {input_name} must have a positive spatial size, got {(height, width)}")
    out = tuple(output_size(s, k, st, p, ceil_mode) for s, k, st, p in zip((height, width), kernel, stride, padding))
    if min(out) < 1:
        raise ValueError(f"{op}: {input_name} of spatial size {(height, width)} is too small for kernel_size {kernel} "
                         f"and padding {padding}: the output would be {out}")
    return kernel, stride, padding, out


def _check_input(t, name, op):
    check_nc_input(t, name, op)
    if t.dim() != 4:
        raise ValueError(f"{op}: {name} must be 4-dimensional (N, C, H, W), got {t.dim()} dimensions")


def check_op_args(x, kernel_size, stride, padding, ceil_mode, uniforms=None, rng_state=None, op: str = OP):
    """The Python twin of stochastic_pool_forward_call's checks, in the same order; returns the output shape."""
    _check_input(x, "x", op)
    out = check_pool_args(x.shape[2], x.shape[3], kernel_size, stride, padding, ceil_mode, "x", op)[3]
    shape = (x.shape[0], x.shape[1], *out)
    if uniforms is not None:
        check_tensor(uniforms, "uniforms", op)
        if uniforms.dtype != torch.float32:
            raise TypeError(f"{op}: uniforms must be float32 (u in [0, 1)), got {uniforms.dtype}")
        check_same_device(uniforms, x, "uniforms", op, ref_name="x")
        if tuple(uniforms.shape) != shape:
            raise ValueError(f"{op}: uniforms must have the output's shape {shape}, got {tuple(uniforms.shape)}")
    if rng_state is not None:
        check_rng_state(rng_state, x, "rng_state", op)
    return shape


def check_expectation_args(x, kernel_size, stride, padding, ceil_mode):
    return check_op_args(x, kernel_size, stride, padding, ceil_mode)


def check_backward_args(grad_y, offset, input_size, kernel_size, stride, padding, ceil_mode):
    op = BACKWARD_OP
    _check_input(grad_y, "grad_y", op)
    check_tensor(offset, "offset", op)
    if offset.dtype != torch.uint8:
        raise TypeError(f"{op}: offset must be uint8, got {offset.dtype}")
    check_same_device(offset, grad_y, "offset", op, ref_name="grad_y")
    if offset.shape != grad_y.shape:
        raise ValueError(f"{op}: offset must have grad_y's shape {tuple(grad_y.shape)}, got {tuple(offset.shape)}")
    height, width = pair(input_size, "input_size", op)
    out = check_pool_args(height, width, kernel_size, stride, padding, ceil_mode, "input_size", op)[3]
    if tuple(grad_y.shape[2:]) != out:
        raise ValueError(f"{op}: grad_y's spatial size {tuple(grad_y.shape[2:])} is not the output size {out} of "
                         f"input_size {(height, width)}")


def check_expectation_backward_args(grad_y, x, kernel_size, stride, padding, ceil_mode):
    op = EXPECTATION_BACKWARD_OP
    _check_input(x, "x", op)
    out = check_pool_args(x.shape[2], x.shape[3], kernel_size, stride, padding, ceil_mode, "x", op)[3]
    check_tensor(grad_y, "grad_y", op)
    check_same_device(grad_y, x, "grad_y", op, ref_name="x")
    if grad_y.dtype != x.dtype:
        raise TypeError(f"{op}: grad_y must have x's dtype {x.dtype}, got {grad_y.dtype}")
    shape = (x.shape[0], x.shape[1], *out)
    if tuple(grad_y.shape) != shape:
        raise ValueError(f"{op}: grad_y must have the output's shape {shape}, got {tuple(grad_y.shape)}")


PYTHON_CHECKS["stochastic_pool2d"] = check_op_args
PYTHON_CHECKS["stochastic_pool2d_expectation"] = check_expectation_args


# ---------------------------------------------------------------------------------------------- Triton ops


def _triton():
    from cifarops.triton_kernels import stochastic_pool2d as kernels  # imports triton only when used

    return kernels


def _forward_outputs(x, shape, sample):
    fmt = dense_format(x)
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    offset = torch.empty(shape, dtype=torch.uint8, device=x.device, memory_format=fmt) if sample else None
    return x.contiguous(memory_format=fmt), y, offset, fmt


def _sizes(kernel_size, stride, padding):
    return tuple(kernel_size), tuple(stride), tuple(padding)


@torch.library.custom_op("cifarops_triton::stochastic_pool2d", mutates_args=(), schema=SCHEMAS["stochastic_pool2d"],
                         tags=(torch.Tag.nondeterministic_seeded,))
def triton_stochastic_pool2d(x, kernel_size, stride, padding, ceil_mode, uniforms, rng_state):
    shape = check_op_args(x, kernel_size, stride, padding, ceil_mode, uniforms, rng_state)
    from cifarops.philox import draw_state

    # Every check first: a call that fails them draws nothing.
    if rng_state is not None:
        state = rng_state.contiguous().clone()
    else:
        state = draw_state(x.device, STREAMS) if uniforms is None else torch.zeros(2, dtype=torch.int64, device=x.device)
    x, y, offset, fmt = _forward_outputs(x, shape, True)
    u = None if uniforms is None else uniforms.contiguous(memory_format=fmt)
    _triton().stochastic_pool2d_fwd(x, y, offset, u, None if u is not None else state,
                                    *_sizes(kernel_size, stride, padding), fmt == torch.channels_last, False)
    return y, offset, state


@torch.library.custom_op("cifarops_triton::_stochastic_pool2d_backward", mutates_args=(),
                         schema=SCHEMAS["_stochastic_pool2d_backward"])
def triton_stochastic_pool2d_backward(grad_y, offset, input_size, kernel_size, stride, padding, ceil_mode):
    check_backward_args(grad_y, offset, input_size, kernel_size, stride, padding, ceil_mode)
    fmt = dense_format(offset)
    grad_x = torch.empty((*grad_y.shape[:2], *input_size), dtype=grad_y.dtype, device=grad_y.device,
                         memory_format=fmt)
    _triton().stochastic_pool2d_bwd(grad_y.contiguous(memory_format=fmt), offset.contiguous(memory_format=fmt), None,
                                    grad_x, *_sizes(kernel_size, stride, padding), fmt == torch.channels_last)
    return grad_x


@torch.library.custom_op("cifarops_triton::stochastic_pool2d_expectation", mutates_args=(),
                         schema=SCHEMAS["stochastic_pool2d_expectation"])
def triton_stochastic_pool2d_expectation(x, kernel_size, stride, padding, ceil_mode):
    shape = check_op_args(x, kernel_size, stride, padding, ceil_mode)
    x, y, _, fmt = _forward_outputs(x, shape, False)
    _triton().stochastic_pool2d_fwd(x, y, None, None, None, *_sizes(kernel_size, stride, padding),
                                    fmt == torch.channels_last, True)
    return y


@torch.library.custom_op("cifarops_triton::_stochastic_pool2d_expectation_backward", mutates_args=(),
                         schema=SCHEMAS["_stochastic_pool2d_expectation_backward"])
def triton_stochastic_pool2d_expectation_backward(grad_y, x, kernel_size, stride, padding, ceil_mode):
    check_expectation_backward_args(grad_y, x, kernel_size, stride, padding, ceil_mode)
    fmt = dense_format(x)
    x = x.contiguous(memory_format=fmt)
    grad_x = torch.empty_like(x, memory_format=fmt)
    _triton().stochastic_pool2d_bwd(grad_y.contiguous(memory_format=fmt), None, x, grad_x,
                                    *_sizes(kernel_size, stride, padding), fmt == torch.channels_last)
    return grad_x


# ------------------------------------------------------------------------------------- fake and autograd


def _fake_forward(x, kernel_size, stride, padding, ceil_mode, uniforms, rng_state):
    shape = check_op_args(x, kernel_size, stride, padding, ceil_mode, uniforms, rng_state)
    _, y, offset, _ = _forward_outputs(x, shape, True)
    return y, offset, x.new_empty((2,), dtype=torch.int64)


def _fake_expectation(x, kernel_size, stride, padding, ceil_mode):
    shape = check_op_args(x, kernel_size, stride, padding, ceil_mode)
    return _forward_outputs(x, shape, False)[1]


def _fake_backward(grad_y, offset, input_size, kernel_size, stride, padding, ceil_mode):
    check_backward_args(grad_y, offset, input_size, kernel_size, stride, padding, ceil_mode)
    return torch.empty((*grad_y.shape[:2], *input_size), dtype=grad_y.dtype, device=grad_y.device,
                       memory_format=dense_format(offset))


def _fake_expectation_backward(grad_y, x, kernel_size, stride, padding, ceil_mode):
    check_expectation_backward_args(grad_y, x, kernel_size, stride, padding, ceil_mode)
    return torch.empty_like(x, memory_format=dense_format(x))


def _register_triton_autograd(ns) -> None:
    """The Triton ops' autograd, the formulas of the compiled ops' C++ nodes (csrc/args/stochastic_pool2d.cpp)."""
    from cifarops.reference.stochastic_pool2d import stochastic_pool2d_select

    backward, expectation_backward = ns._stochastic_pool2d_backward.default, ns._stochastic_pool2d_expectation_backward.default

    def setup_forward(ctx, inputs, output):
        x, kernel_size, stride, padding, ceil_mode = inputs[:5]
        ctx.save_for_backward(output[1])  # one byte per output: the drawn offset
        ctx.args = (list(x.shape[2:]), kernel_size, stride, padding, ceil_mode)
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.set_materialize_grads(False)

    def backward_forward(ctx, grad_y, _grad_offset, _grad_state):
        (offset,) = ctx.saved_tensors
        grad = None if grad_y is None else backward(grad_y, offset, *ctx.args)
        return grad, None, None, None, None, None, None

    def setup_backward(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.args = (inputs[3], inputs[4], inputs[5])
        ctx.set_materialize_grads(False)

    def backward_backward(ctx, grad_grad_x):
        (offset,) = ctx.saved_tensors
        grad = None if grad_grad_x is None else stochastic_pool2d_select(grad_grad_x, offset, *ctx.args)
        return grad, None, None, None, None, None, None

    def setup_expectation(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])  # the expectation's gradient depends on every element of the region
        ctx.args = inputs[1:]
        ctx.set_materialize_grads(False)

    def backward_expectation(ctx, grad_y):
        (x,) = ctx.saved_tensors
        grad = None if grad_y is None else expectation_backward(grad_y, x, *ctx.args)
        return grad, None, None, None, None

    def setup_expectation_backward(ctx, inputs, output):
        pass

    def backward_expectation_backward(ctx, *grads):
        raise NotImplementedError(SECOND_DERIVATIVE)

    torch.library.register_autograd(ns.stochastic_pool2d.default, backward_forward, setup_context=setup_forward)
    torch.library.register_autograd(backward, backward_backward, setup_context=setup_backward)
    torch.library.register_autograd(ns.stochastic_pool2d_expectation.default, backward_expectation,
                                    setup_context=setup_expectation)
    torch.library.register_autograd(expectation_backward, backward_expectation_backward,
                                    setup_context=setup_expectation_backward)


for _namespace in (torch.ops.cifarops_triton,) + ((torch.ops.cifarops,) if _extension.LOADED else ()):
    torch.library.register_fake(_namespace.stochastic_pool2d.default)(_fake_forward)
    torch.library.register_fake(_namespace._stochastic_pool2d_backward.default)(_fake_backward)
    torch.library.register_fake(_namespace.stochastic_pool2d_expectation.default)(_fake_expectation)
    torch.library.register_fake(_namespace._stochastic_pool2d_expectation_backward.default)(_fake_expectation_backward)
_register_triton_autograd(torch.ops.cifarops_triton)
