"""torch.library registrations for fractional max-pooling: the Python twin of the argument checks of
csrc/args/fractional_max_pool2d.cpp (for the Triton ops, the fake kernels and the reference path), fake kernels
of the compiled ops (schemas in csrc/ops.cpp; their autograd is in C++), the double-backward op
`cifarops::_fractional_max_pool2d_select`, and the Triton ops `cifarops_triton::*` with the same schemas and a
Python autograd.

Saved for backward: each output's choice (one byte: its offset inside the region, unless the caller asked
for PyTorch's int64 indices) and the draws (explicit ones, or the 16-byte RNG state the op drew them from),
from which backward recomputes the regions."""

from __future__ import annotations

import functools
import math
import struct

import torch

from cifarops import _extension, philox, reference
from cifarops.ops.common import FLOATING, check_rng_state, check_same_device, check_tensor, dense_format

REGIONS = reference.FMP_REGIONS
SEQUENCES = reference.FMP_SEQUENCES
STREAMS = reference.FMP_STREAMS


def _pair_of_ints(value, name: str, op: str) -> tuple[int, int]:
    integer = (int, torch.SymInt)  # sizes are symbolic under torch.compile's dynamic shapes
    values = (value, value) if isinstance(value, integer) and not isinstance(value, bool) else value
    try:
        h, w = values
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints (height, width), got {value!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, integer) for v in (h, w)):
        raise TypeError(f"{op}: {name} must hold ints, got {value!r}")
    return h, w


def check_args(x, kernel_size, output_size, regions, op: str, input_size=None, sequence="pseudorandom") -> tuple:
    """Checks the sizes and regions against x (or grad_y with input_size); returns (kernel, output, input)
    pairs, kernel (0, 0) for Graham's regions. Same rules and messages as csrc/args/fractional_max_pool2d.cpp."""
    check_tensor(x, "x", op)
    if x.dtype not in FLOATING:
        raise TypeError(f"{op}: x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-dimensional (N, C, H, W), got shape {tuple(x.shape)}")
    if regions not in REGIONS:
        raise ValueError(f"{op}: regions must be one of {REGIONS}, got {regions!r}")
    if sequence not in SEQUENCES:
        raise ValueError(f"{op}: sequence must be one of {SEQUENCES}, got {sequence!r}")
    if regions == "window" and sequence == "random":
        raise ValueError(f"{op}: sequence='random' is for Graham's 'disjoint' and 'overlapping' regions")
    size_in = tuple(x.shape[2:]) if input_size is None else _pair_of_ints(input_size, "input_size", op)
    size_out = _pair_of_ints(output_size, "output_size", op)
    if regions == "window":
        kernel = _pair_of_ints(kernel_size, "kernel_size", op)
    elif kernel_size is not None and len(kernel_size) != 0:
        raise ValueError(f"{op}: kernel_size is for regions='window'; Graham's {regions!r} regions take none, got {kernel_size!r}")
    else:
        kernel = (0, 0)
    for axis, i, o, k in zip(("height", "width"), size_in, size_out, kernel):
        if o < 1:
            raise ValueError(f"{op}: output_size must be positive, got {o} for the {axis}")
        if o >= i:
            raise ValueError(f"{op}: the output {axis} {o} must be smaller than the input {axis} {i}")
        if regions == "window":
            if k < 1:
                raise ValueError(f"{op}: kernel_size must be positive, got {k} for the {axis}")
            if k + o - 1 > i:
                raise ValueError(f"{op}: kernel_size {k} is too large for output {axis} {o} from input {axis} {i} "
                                 "(needs kernel_size + output - 1 <= input)")
        elif i > 2 * o:
            raise ValueError(f"{op}: Graham's regions take 1 or 2 rows each, so the input {axis} {i} can be at most "
                             f"twice the output {axis} {o}")
    return kernel, size_out, size_in


def check_draws(x, size_in, size_out, regions, samples, boundaries, op: str, values: bool, sequence="pseudorandom",
                rng_state=None, ref_name="x", needs_state=False, device_values=False) -> bool:
    """Shapes, dtypes and devices of the draws; their values too when `values` (a host read: the ops check CPU
    tensors, the functional API device tensors when CIFAROPS_CHECK_VALUES=1), else, with `device_values`, on
    the device without a host read (assert_draw_values_async). Returns whether the call draws them itself; a
    backward (`needs_state`) that would draws from rng_state, which must be given."""
    n, c = x.shape[0], x.shape[1]
    if samples is not None and boundaries is not None:
        raise ValueError(f"{op}: pass at most one of samples and boundaries, not both")
    if regions == "window" and boundaries is not None:
        raise ValueError(f"{op}: regions='window' takes samples, not boundaries")
    if rng_state is not None:
        check_rng_state(rng_state, x, "rng_state", op)
    if samples is None and boundaries is None:
        if needs_state and rng_state is None:
            raise ValueError(f"{op}: rng_state (the forward's) is required when neither samples nor boundaries are given")
        return True
    if samples is not None:
        if sequence == "random":
            raise ValueError(f"{op}: samples draw pseudorandom sequences; pass boundaries for explicit ones")
        check_tensor(samples, "samples", op)
        check_same_device(samples, x, "samples", op, ref_name=ref_name)
        if samples.dtype != x.dtype:
            raise TypeError(f"{op}: samples must have the input's dtype {x.dtype}, got {samples.dtype}")
        if tuple(samples.shape) != (n, c, 2):
            raise ValueError(f"{op}: samples must have shape (N, C, 2) = ({n}, {c}, 2), got {tuple(samples.shape)}")
        if values and samples.numel() and not bool(((samples >= 0) & (samples < 1)).all()):
            raise ValueError(f"{op}: samples must lie in [0, 1), got values from {samples.min().item()} to "
                             f"{samples.max().item()}")
        if device_values and not values:
            assert_draw_values_async(samples, None, size_in, size_out, op)
        return False
    check_tensor(boundaries, "boundaries", op)
    check_same_device(boundaries, x, "boundaries", op, ref_name=ref_name)
    if boundaries.dtype != torch.int64:
        raise TypeError(f"{op}: boundaries must be int64, got {boundaries.dtype}")
    length = max(size_out) + 1
    if boundaries.dim() != 4 or tuple(boundaries.shape[:3]) != (n, c, 2) or boundaries.shape[3] < length:
        raise ValueError(f"{op}: boundaries must have shape (N, C, 2, L) = ({n}, {c}, 2, >= {length}), "
                         f"got {tuple(boundaries.shape)}")
    if values and boundaries.numel():
        for axis_index, i, o, ends_ok, steps_ok in _boundary_conditions(boundaries, size_in, size_out):
            if not bool(ends_ok):
                raise ValueError(f"{op}: boundaries[..., {axis_index}, :] must start at 0 and reach the input size "
                                 f"{i} at index {o}")
            if not bool(steps_ok):
                raise ValueError(f"{op}: boundaries[..., {axis_index}, :] must increase in steps of 1 or 2")
    if device_values and not values:
        assert_draw_values_async(None, boundaries, size_in, size_out, op)
    return False


def assert_draw_values_async(samples, boundaries, size_in, size_out, op: str) -> None:
    """check_draws' value checks as device-side asserts (torch._assert_async): no host read, capture-safe, a few
    small kernels. A bad draw stops the device with the message, and the next synchronising call raises
    "device-side assert triggered", as the CUDA kernels' own check does (FmpParams::check_draws). On CPU
    tensors torch raises the message at once."""
    if samples is not None and samples.numel():
        torch._assert_async(((samples >= 0) & (samples < 1)).all(), f"{op}: samples must lie in [0, 1) (checked on the device)")
    if boundaries is not None and boundaries.numel():
        ok = None
        for _, _, _, ends_ok, steps_ok in _boundary_conditions(boundaries, size_in, size_out):
            ok = ends_ok & steps_ok if ok is None else ok & ends_ok & steps_ok
        torch._assert_async(ok, f"{op}: boundaries must start at 0, increase in steps of 1 or 2 and reach the "
                                "input size at index out (checked on the device)")


def _boundary_conditions(boundaries, size_in, size_out):
    """Per axis (index 0 the width): (axis index, in, out, a_0 = 0 and a_out = in, every step 1 or 2), the two
    conditions as 0-dim bool tensors on the boundaries' device (read back by the host check, asserted on the
    device by the async one)."""
    for axis_index, (i, o) in enumerate(((size_in[1], size_out[1]), (size_in[0], size_out[0]))):
        a = boundaries[:, :, axis_index, : o + 1]
        steps = a.diff(dim=-1)
        yield axis_index, i, o, (a[..., 0] == 0).all() & (a[..., o] == i).all(), ((steps >= 1) & (steps <= 2)).all()


def wide_index(kernel, regions: str, return_indices: bool) -> bool:
    span_h, span_w = reference.fmp_span(regions, kernel[0]), reference.fmp_span(regions, kernel[1])
    return return_indices or span_h * span_w > 256


def _round_to(x: float, dtype: torch.dtype) -> float:
    """x rounded to nearest-even in `dtype`, on the host without a tensor (x finite, >= 0)."""
    if dtype == torch.float64:
        return x
    if dtype == torch.float16:
        return struct.unpack("e", struct.pack("e", x))[0] if x < 65520.0 else math.inf  # 65520 rounds up to inf
    x = struct.unpack("f", struct.pack("f", x))[0]
    if dtype == torch.bfloat16:  # float32's top 16 bits, ties to even
        bits = struct.unpack("I", struct.pack("f", x))[0]
        x = struct.unpack("f", struct.pack("I", (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000))[0]
    return x


def _divide_in(a: int, b: int, dtype: torch.dtype) -> float:
    """a / b as `dtype` computes it (operands rounded to it, then the quotient): Python's double quotient is
    correctly rounded, and rounding it again to float32, float16 or bfloat16 (through float32) gives that type's
    correctly rounded quotient (a second rounding is harmless from 2p + 2 bits on: 53 >= 50, 24 >= 18)."""
    return _round_to(_round_to(a, dtype) / _round_to(b, dtype), dtype)


def _alpha(size_in, size_out, kernel, regions, dtype, device) -> torch.Tensor:
    """[width, height] alphas in the interval arithmetic's type (as csrc/args/fractional_max_pool2d.cpp), made on
    the device by fills: no tensor from host data, no host read (tests/test_host_sync.py). Cached per
    configuration, except while a CUDA graph is captured: a tensor filled there holds nothing before a replay."""
    if torch.device(device).type == "cuda" and torch.cuda.is_current_stream_capturing():
        return _make_alpha(size_in, size_out, kernel, regions, dtype, device)
    return _cached_alpha(size_in, size_out, kernel, regions, dtype, device)


def _make_alpha(size_in, size_out, kernel, regions, dtype, device) -> torch.Tensor:
    acc = reference.opmath_dtype(dtype)
    values = []
    for i, o, k in ((size_in[1], size_out[1], kernel[1]), (size_in[0], size_out[0], kernel[0])):
        if regions == "window":
            values.append(_divide_in(i - k, max(o - 1, 1), reference.fmp_interval_dtype(dtype, device)))
        else:  # Graham's regions: the kernels compute the exact integer sequence and ignore this alpha
            values.append(_divide_in(i, o, acc))
    return torch.stack([torch.full((), v, dtype=acc, device=device) for v in values])


_cached_alpha = functools.lru_cache(maxsize=256)(_make_alpha)


# ---------------------------------------------------------------------------------------------- Triton ops

_SCHEMAS = {
    "fractional_max_pool2d": (
        "(Tensor x, int[] kernel_size, int[] output_size, str regions, Tensor? samples, Tensor? boundaries, "
        "bool return_indices, str sequence, bool per_image, Tensor? rng_state) -> (Tensor, Tensor, Tensor)"
    ),
    "_fractional_max_pool2d_backward": (
        "(Tensor grad_y, Tensor index, SymInt[] input_size, int[] kernel_size, str regions, Tensor? samples, "
        "Tensor? boundaries, str sequence, bool per_image, Tensor? rng_state) -> Tensor"
    ),
}
FORWARD_OP, BACKWARD_OP = "cifarops.fractional_max_pool2d", "cifarops._fractional_max_pool2d_backward"


def _triton():
    from cifarops.triton_kernels import fractional_max_pool2d as kernels  # imports triton only when used

    return kernels


def _outputs(x, kernel, size_out, regions, return_indices):
    fmt = dense_format(x)
    shape = (x.shape[0], x.shape[1], *size_out)
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    index_dtype = torch.int64 if wide_index(kernel, regions, return_indices) else torch.uint8
    return x.contiguous(memory_format=fmt), y, torch.empty(shape, dtype=index_dtype, device=x.device, memory_format=fmt)


def _check_index(grad_y, index, kernel, regions):
    check_tensor(index, "index", BACKWARD_OP)
    check_same_device(index, grad_y, "index", BACKWARD_OP, ref_name="grad_y")
    if index.dtype not in (torch.int64, torch.uint8):
        raise TypeError(f"{BACKWARD_OP}: index must be int64 or uint8, got {index.dtype}")
    if index.shape != grad_y.shape:
        raise ValueError(f"{BACKWARD_OP}: index must have grad_y's shape {tuple(grad_y.shape)}, got {tuple(index.shape)}")
    if index.dtype == torch.uint8 and wide_index(kernel, regions, False):
        raise ValueError(f"{BACKWARD_OP}: uint8 index needs regions of at most 256 elements")


def _grad_input(grad_y, index, size_in):
    fmt = dense_format(index)
    shape = (grad_y.shape[0], grad_y.shape[1], *size_in)
    grad_x = torch.empty(shape, dtype=grad_y.dtype, device=grad_y.device, memory_format=fmt)
    return grad_y.contiguous(memory_format=fmt), index.contiguous(memory_format=fmt), grad_x


def _sample_max(dtype) -> float:
    return 1 - torch.finfo(dtype).eps / 2


@torch.library.custom_op("cifarops_triton::fractional_max_pool2d", mutates_args=(), schema=_SCHEMAS["fractional_max_pool2d"],
                         tags=(torch.Tag.nondeterministic_seeded,))
def triton_fractional_max_pool2d(x, kernel_size, output_size, regions, samples, boundaries, return_indices, sequence,
                                 per_image, rng_state):
    kernel, size_out, size_in = check_args(x, kernel_size, output_size, regions, FORWARD_OP, sequence=sequence)
    draws = check_draws(x, size_in, size_out, regions, samples, boundaries, FORWARD_OP, values=x.device.type == "cpu",
                        device_values=True, sequence=sequence, rng_state=rng_state)
    x, y, index = _outputs(x, kernel, size_out, regions, return_indices)
    alpha = _alpha(size_in, size_out, kernel, regions, x.dtype, x.device)
    if not draws:
        state = torch.zeros(2, dtype=torch.int64, device=x.device)
    else:  # checked: now draw
        state = rng_state.clone() if rng_state is not None else philox.draw_state(x.device, STREAMS)
    _triton().fmp_fwd(x, y, index, samples, boundaries, kernel, regions, alpha, state if draws else None,
                      sequence == "random", 1 if per_image else x.shape[1], _sample_max(x.dtype))
    return y, index, state


@torch.library.custom_op(
    "cifarops_triton::_fractional_max_pool2d_backward", mutates_args=(), schema=_SCHEMAS["_fractional_max_pool2d_backward"]
)
def triton_fractional_max_pool2d_backward(grad_y, index, input_size, kernel_size, regions, samples, boundaries, sequence,
                                          per_image, rng_state):
    kernel, size_out, size_in = check_args(grad_y, kernel_size, grad_y.shape[2:], regions, BACKWARD_OP, input_size,
                                           sequence=sequence)
    _check_index(grad_y, index, kernel, regions)
    draws = check_draws(grad_y, size_in, size_out, regions, samples, boundaries, BACKWARD_OP,
                        values=grad_y.device.type == "cpu", device_values=True, sequence=sequence, rng_state=rng_state,
                        ref_name="grad_y", needs_state=True)
    grad_y, index, grad_x = _grad_input(grad_y, index, size_in)
    alpha = _alpha(size_in, size_out, kernel, regions, grad_y.dtype, grad_y.device)
    _triton().fmp_bwd(grad_y, index, grad_x, samples, boundaries, kernel, regions, alpha, rng_state if draws else None,
                      sequence == "random", 1 if per_image else grad_y.shape[1], _sample_max(grad_y.dtype))
    return grad_x


# ------------------------------------------------------------------------------------- fake and autograd


def _fake_forward(x, kernel_size, output_size, regions, samples, boundaries, return_indices, sequence, per_image,
                  rng_state):
    kernel, size_out, size_in = check_args(x, kernel_size, output_size, regions, FORWARD_OP, sequence=sequence)
    check_draws(x, size_in, size_out, regions, samples, boundaries, FORWARD_OP, values=False, sequence=sequence,
                rng_state=rng_state)
    _, y, index = _outputs(x, kernel, size_out, regions, return_indices)
    return y, index, torch.empty(2, dtype=torch.int64, device=x.device)


def _fake_backward(grad_y, index, input_size, kernel_size, regions, samples, boundaries, sequence, per_image, rng_state):
    kernel, size_out, size_in = check_args(grad_y, kernel_size, grad_y.shape[2:], regions, BACKWARD_OP, input_size,
                                           sequence=sequence)
    _check_index(grad_y, index, kernel, regions)
    check_draws(grad_y, size_in, size_out, regions, samples, boundaries, BACKWARD_OP, values=False, sequence=sequence,
                rng_state=rng_state, ref_name="grad_y", needs_state=True)
    return _grad_input(grad_y, index, size_in)[2]


def _select(values, index, kernel_size, regions, samples, boundaries, sequence, per_image, rng_state):
    return reference.fractional_max_pool2d_select(values, index, kernel_size, regions, samples, boundaries, sequence,
                                                  per_image, rng_state)


def _register_fakes(ns) -> None:
    torch.library.register_fake(ns.fractional_max_pool2d.default)(_fake_forward)
    torch.library.register_fake(ns._fractional_max_pool2d_backward.default)(_fake_backward)


def _register_triton_autograd(ns) -> None:
    forward, backward = ns.fractional_max_pool2d.default, ns._fractional_max_pool2d_backward.default

    def setup_forward(ctx, inputs, output):
        x, kernel_size, _, regions, samples, boundaries, _, sequence, per_image, _ = inputs
        drew = samples is None and boundaries is None
        # the choices and the (small) draws, or the 16-byte state they were drawn from
        ctx.save_for_backward(output[1], samples, boundaries, output[2] if drew else None)
        ctx.args = (list(x.shape[2:]), kernel_size, regions, sequence, per_image)
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.set_materialize_grads(False)

    def backward_forward(ctx, grad_y, _grad_index, _grad_state):
        index, samples, boundaries, state = ctx.saved_tensors
        input_size, kernel_size, regions, sequence, per_image = ctx.args
        if grad_y is None or not ctx.needs_input_grad[0]:
            return (None,) * 10
        grad = backward(grad_y, index, input_size, kernel_size, regions, samples, boundaries, sequence, per_image, state)
        return (grad,) + (None,) * 9

    def setup_backward(ctx, inputs, output):
        _, index, _, kernel_size, regions, samples, boundaries, sequence, per_image, rng_state = inputs
        ctx.save_for_backward(index, samples, boundaries, rng_state)
        ctx.args = (kernel_size, regions, sequence, per_image)
        ctx.set_materialize_grads(False)

    def backward_backward(ctx, grad_grad_x):
        # The backward is linear in grad_y: its gradient reads grad_grad_x at each output's choice.
        index, samples, boundaries, rng_state = ctx.saved_tensors
        if grad_grad_x is None:
            return (None,) * 10
        kernel_size, regions, sequence, per_image = ctx.args
        grad = _select(grad_grad_x, index, kernel_size, regions, samples, boundaries, sequence, per_image, rng_state)
        return (grad,) + (None,) * 9

    torch.library.register_autograd(forward, backward_forward, setup_context=setup_forward)
    torch.library.register_autograd(backward, backward_backward, setup_context=setup_backward)


_register_fakes(torch.ops.cifarops_triton)
_register_triton_autograd(torch.ops.cifarops_triton)
if _extension.LOADED:
    _register_fakes(torch.ops.cifarops)
    # The compiled ops' autograd is C++ (csrc/args/fractional_max_pool2d.cpp); its double backward calls this.
    _LIBRARY = torch.library.Library("cifarops", "IMPL")
    _LIBRARY.impl("_fractional_max_pool2d_select", _select, "CompositeImplicitAutograd")
