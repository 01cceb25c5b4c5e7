"""torch.library registrations for maxout and probabilistic maxout: fake kernels for the compiled ops
(schemas in csrc/ops.cpp; their checks and autograd are in C++, csrc/args/maxout.cpp) and the Triton ops
`cifarops_triton::*` with the same schemas, their checks (this file's check_args, the Python twin of the C++
checks: same exception types and messages) and autograd.

Saved for backward: the chosen piece of each output as one byte (maxout, probabilistic maxout in training),
or the input (the test-time expectation, whose gradient depends on every piece). Probabilistic maxout draws
inside its kernel from an RNG state {seed, offset}: the explicit `rng_state`, else the generator's
(cifarops.philox.draw_state on the Triton side), and returns the state it used."""

from __future__ import annotations

import torch

from cifarops import _extension, philox
from cifarops.ops.common import FLOATING, check_rng_state, check_same_device, check_tensor, dense_format

GROUPINGS = ("contiguous", "strided")


def check_args(x, pieces, dim, grouping, op: str, temperature=None, grouped_input=True) -> int:
    """Checks maxout's arguments; returns dim wrapped to [0, x.dim()). grouped_input: x holds the k pieces
    along dim (False for an output-shaped gradient)."""
    check_tensor(x, "x", op)
    if x.dtype not in FLOATING:
        raise TypeError(f"{op}: x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if isinstance(pieces, bool) or not isinstance(pieces, int):
        raise TypeError(f"{op}: pieces must be an int, got {type(pieces).__name__}")
    if not 1 <= pieces <= 255:
        raise ValueError(f"{op}: pieces must be in [1, 255] (the chosen piece is stored in a byte), got {pieces}")
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least one dimension")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{op}: dim must be an int, got {type(dim).__name__}")
    if not -x.dim() <= dim < x.dim():
        raise IndexError(f"{op}: dim {dim!r} is out of range for a {x.dim()}-dimensional x")
    dim %= x.dim()
    if grouping not in GROUPINGS:
        raise ValueError(f"{op}: grouping must be one of {GROUPINGS}, got {grouping!r}")
    if grouped_input and x.shape[dim] % pieces:
        raise ValueError(f"{op}: x.shape[{dim}] = {x.shape[dim]} channels are not divisible by pieces = {pieces}")
    if temperature is not None and (isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and temperature > 0)):
        raise ValueError(f"{op}: temperature must be a positive number, got {temperature!r}")
    return dim


def layout(t: torch.Tensor, dim: int) -> torch.memory_format:
    """channels_last is kept when dim is the channel dim of a channels_last tensor; everything else runs on
    contiguous tensors (the same rule as csrc/args/maxout.cpp)."""
    fmt = dense_format(t)
    return fmt if fmt == torch.channels_last and dim == 1 else torch.contiguous_format


def _outputs(x, pieces, dim, with_index):
    fmt = layout(x, dim)
    shape = list(x.shape)
    shape[dim] //= pieces
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    index = torch.empty(shape, dtype=torch.uint8, device=x.device, memory_format=fmt) if with_index else None
    return x.contiguous(memory_format=fmt), y, index


def _grad_input(grad_y, like_index_or_x, pieces, dim):
    fmt = layout(like_index_or_x, dim)
    shape = list(grad_y.shape)
    shape[dim] *= pieces
    return grad_y.contiguous(memory_format=fmt), torch.empty(shape, dtype=grad_y.dtype, device=grad_y.device, memory_format=fmt)


# ---------------------------------------------------------------------------------------------- Triton ops

# Written out because inference from Python hints would make the ints SymInt; tests/test_build.py checks
# that they equal csrc/ops.cpp's.
_SCHEMAS = {
    "maxout": "(Tensor x, int pieces, int dim, str grouping) -> (Tensor, Tensor)",
    "_maxout_backward": "(Tensor grad_y, Tensor index, int pieces, int dim, str grouping) -> Tensor",
    "probabilistic_maxout": (
        "(Tensor x, int pieces, int dim, str grouping, float temperature, Tensor? rng_state) -> (Tensor, Tensor, Tensor)"
    ),
    "probabilistic_maxout_expectation": "(Tensor x, int pieces, int dim, str grouping, float temperature) -> Tensor",
    "_probabilistic_maxout_expectation_backward": (
        "(Tensor grad_y, Tensor x, int pieces, int dim, str grouping, float temperature) -> Tensor"
    ),
}


def _triton():
    from cifarops.triton_kernels import maxout as kernels  # imports triton only when used

    return kernels


@torch.library.custom_op("cifarops_triton::maxout", mutates_args=(), schema=_SCHEMAS["maxout"])
def triton_maxout(x: torch.Tensor, pieces: int, dim: int, grouping: str) -> tuple[torch.Tensor, torch.Tensor]:
    dim = check_args(x, pieces, dim, grouping, "cifarops.maxout")
    x, y, index = _outputs(x, pieces, dim, True)
    k = _triton()
    k.maxout_fwd(x, y, index, None, pieces, dim, grouping == "strided", k.MODE_MAX, None)
    return y, index


@torch.library.custom_op("cifarops_triton::_maxout_backward", mutates_args=(), schema=_SCHEMAS["_maxout_backward"])
def triton_maxout_backward(grad_y: torch.Tensor, index: torch.Tensor, pieces: int, dim: int, grouping: str) -> torch.Tensor:
    dim = check_args(grad_y, pieces, dim, grouping, "cifarops._maxout_backward", grouped_input=False)
    _check_index(grad_y, index)
    grad_y, grad_x = _grad_input(grad_y, index, pieces, dim)
    index = index.contiguous(memory_format=layout(index, dim))
    _triton().maxout_bwd(grad_y, index, None, grad_x, pieces, dim, grouping == "strided", None)
    return grad_x


@torch.library.custom_op(
    "cifarops_triton::probabilistic_maxout",
    mutates_args=(),
    schema=_SCHEMAS["probabilistic_maxout"],
    tags=(torch.Tag.nondeterministic_seeded,),
)
def triton_probabilistic_maxout(
    x: torch.Tensor, pieces: int, dim: int, grouping: str, temperature: float, rng_state: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dim = check_args(x, pieces, dim, grouping, "cifarops.probabilistic_maxout", temperature)
    if rng_state is not None:
        check_rng_state(rng_state, x, "rng_state", "cifarops.probabilistic_maxout")
    # Every check first: a call that fails them draws nothing.
    state = philox.draw_state(x.device, STREAMS) if rng_state is None else rng_state.contiguous().clone()
    x, y, index = _outputs(x, pieces, dim, True)
    k = _triton()
    k.maxout_fwd(x, y, index, state, pieces, dim, grouping == "strided", k.MODE_SAMPLE, temperature)
    return y, index, state


@torch.library.custom_op(
    "cifarops_triton::probabilistic_maxout_expectation",
    mutates_args=(),
    schema=_SCHEMAS["probabilistic_maxout_expectation"],
)
def triton_probabilistic_maxout_expectation(
    x: torch.Tensor, pieces: int, dim: int, grouping: str, temperature: float
) -> torch.Tensor:
    dim = check_args(x, pieces, dim, grouping, "cifarops.probabilistic_maxout", temperature)
    x, y, _ = _outputs(x, pieces, dim, False)
    k = _triton()
    k.maxout_fwd(x, y, None, None, pieces, dim, grouping == "strided", k.MODE_EXPECTATION, temperature)
    return y


@torch.library.custom_op(
    "cifarops_triton::_probabilistic_maxout_expectation_backward",
    mutates_args=(),
    schema=_SCHEMAS["_probabilistic_maxout_expectation_backward"],
)
def triton_probabilistic_maxout_expectation_backward(
    grad_y: torch.Tensor, x: torch.Tensor, pieces: int, dim: int, grouping: str, temperature: float
) -> torch.Tensor:
    dim = check_args(x, pieces, dim, grouping, "cifarops._probabilistic_maxout_expectation_backward", temperature)
    check_same_device(grad_y, x, "grad_y", "cifarops._probabilistic_maxout_expectation_backward", ref_name="x")
    fmt = layout(x, dim)
    x = x.contiguous(memory_format=fmt)
    grad_x = torch.empty_like(x, memory_format=fmt)
    _triton().maxout_bwd(grad_y.contiguous(memory_format=fmt), None, x, grad_x, pieces, dim, grouping == "strided", temperature)
    return grad_x


def _check_index(grad_y, index):
    op = "cifarops._maxout_backward"
    check_same_device(index, grad_y, "index", op, ref_name="grad_y")
    if index.dtype != torch.uint8:
        raise TypeError(f"{op}: index must be uint8, got {index.dtype}")
    if index.shape != grad_y.shape:
        raise ValueError(f"{op}: index must have grad_y's shape {tuple(grad_y.shape)}, got {tuple(index.shape)}")


STREAMS = 1  # probabilistic maxout's Philox streams: stream 0, one uniform per output element


# ------------------------------------------------------------------------------------- fake and autograd


def _fake_maxout(x, pieces, dim, grouping):
    dim = check_args(x, pieces, dim, grouping, "cifarops.maxout")
    _, y, index = _outputs(x, pieces, dim, True)
    return y, index


def _fake_sample(x, pieces, dim, grouping, temperature, rng_state):
    op = "cifarops.probabilistic_maxout"
    dim = check_args(x, pieces, dim, grouping, op, temperature)
    if rng_state is not None:
        # A state on another device dispatches here (Meta): without this check the call would return meta outputs.
        check_rng_state(rng_state, x, "rng_state", op)
    _, y, index = _outputs(x, pieces, dim, True)
    return y, index, torch.empty((2,), dtype=torch.int64, device=x.device)


def _fake_expectation(x, pieces, dim, grouping, temperature):
    dim = check_args(x, pieces, dim, grouping, "cifarops.probabilistic_maxout", temperature)
    return _outputs(x, pieces, dim, False)[1]


def _fake_backward(grad_y, index, pieces, dim, grouping):
    dim = check_args(grad_y, pieces, dim, grouping, "cifarops._maxout_backward", grouped_input=False)
    _check_index(grad_y, index)
    return _grad_input(grad_y, index, pieces, dim)[1]


def _fake_expectation_backward(grad_y, x, pieces, dim, grouping, temperature):
    dim = check_args(x, pieces, dim, grouping, "cifarops._probabilistic_maxout_expectation_backward", temperature)
    check_same_device(grad_y, x, "grad_y", "cifarops._probabilistic_maxout_expectation_backward", ref_name="x")
    return torch.empty_like(x, memory_format=layout(x, dim))


def gather_chosen(grad_grad_x, index, pieces, dim, grouping):
    """The gradient of _maxout_backward (linear in grad_y): each output's chosen piece of grad_grad_x (the
    formula of MaxoutBackwardFunction in csrc/args/maxout.cpp)."""
    dim %= grad_grad_x.dim()
    groups = grad_grad_x.shape[dim] // pieces
    if grouping == "strided":
        grouped, piece_dim = grad_grad_x.unflatten(dim, (pieces, groups)), dim
    else:
        grouped, piece_dim = grad_grad_x.unflatten(dim, (groups, pieces)), dim + 1
    return grouped.gather(piece_dim, index.long().unsqueeze(piece_dim)).squeeze(piece_dim)


def _register_fake(ns) -> None:
    torch.library.register_fake(ns.maxout.default)(_fake_maxout)
    torch.library.register_fake(ns.probabilistic_maxout.default)(_fake_sample)
    torch.library.register_fake(ns._maxout_backward.default)(_fake_backward)
    torch.library.register_fake(ns.probabilistic_maxout_expectation.default)(_fake_expectation)
    torch.library.register_fake(ns._probabilistic_maxout_expectation_backward.default)(_fake_expectation_backward)


def _register_triton_autograd(ns) -> None:
    """Autograd of the Triton ops (the compiled ops' is in C++): the same formulas, no zeros() for the
    undefined gradients of the index and rng_state outputs."""
    backward = ns._maxout_backward.default
    expectation_backward = ns._probabilistic_maxout_expectation_backward.default

    def setup_chosen(ctx, inputs, output):
        ctx.save_for_backward(output[1])  # one byte per output: the chosen piece
        ctx.args = (inputs[1], inputs[2], inputs[3])
        ctx.others = (None,) * (len(inputs) - 1)
        ctx.set_materialize_grads(False)

    def backward_chosen(ctx, grad_y, *_grad_index_and_state):
        (index,) = ctx.saved_tensors
        if grad_y is None or not ctx.needs_input_grad[0]:
            return (None,) + ctx.others
        return (backward(grad_y, index, *ctx.args),) + ctx.others

    def setup_backward(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.args = inputs[2:]
        ctx.set_materialize_grads(False)

    def backward_backward(ctx, grad_grad_x):
        (index,) = ctx.saved_tensors
        if grad_grad_x is None:
            return None, None, None, None, None
        return gather_chosen(grad_grad_x, index, *ctx.args), None, None, None, None

    def setup_expectation(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])  # the expectation's gradient depends on every piece
        ctx.args = inputs[1:]
        ctx.set_materialize_grads(False)

    def backward_expectation(ctx, grad_y):
        (x,) = ctx.saved_tensors
        if grad_y is None:
            return (None,) * 5
        return (expectation_backward(grad_y, x, *ctx.args),) + (None,) * 4

    for op in (ns.maxout.default, ns.probabilistic_maxout.default):
        torch.library.register_autograd(op, backward_chosen, setup_context=setup_chosen)
    torch.library.register_autograd(backward, backward_backward, setup_context=setup_backward)
    torch.library.register_autograd(ns.probabilistic_maxout_expectation.default, backward_expectation,
                                    setup_context=setup_expectation)


_register_fake(torch.ops.cifarops_triton)
_register_triton_autograd(torch.ops.cifarops_triton)
if _extension.LOADED:
    _register_fake(torch.ops.cifarops)  # checks and autograd of the compiled ops: csrc/args/maxout.cpp
