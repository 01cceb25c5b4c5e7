"""Maxout and probabilistic maxout in pure PyTorch, argument for argument as its op (see the package's docstring)."""

from __future__ import annotations

from typing import Optional

import torch

from cifarops.philox import draw_state, philox_uniform
from cifarops.reference.common import opmath_dtype


def maxout_pieces(x: torch.Tensor, pieces: int, dim: int, grouping: str) -> list[torch.Tensor]:
    """The k pieces of every group, each shaped like the output: contiguous grouping takes channels
    j*k + piece, strided grouping takes piece*(C/k) + j."""
    dim = dim % x.dim()
    groups = x.shape[dim] // pieces
    if grouping == "contiguous":
        grouped = x.unflatten(dim, (groups, pieces))
        return [grouped.select(dim + 1, p) for p in range(pieces)]
    grouped = x.unflatten(dim, (pieces, groups))
    return [grouped.select(dim, p) for p in range(pieces)]


def _first_max(values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise maximum over a list and the index of the first maximum; NaN wins (and propagates)."""
    best = values[0]
    arg = torch.zeros(best.shape, dtype=torch.uint8, device=best.device)
    for p, v in enumerate(values[1:], start=1):
        take = ~torch.isnan(best) & ((v > best) | torch.isnan(v))
        best = torch.where(take, v, best)
        arg = torch.where(take, torch.full_like(arg, p), arg)
    return best, arg


# ln(2)^n / n! in float32, n = 8 down to 0, and log2(e) in float32 (csrc/include/cifarops/rounding.h's draw_exp).
_DRAW_EXP_TAYLOR = tuple(float.fromhex(h) for h in (
    "0x1.62c022p-20", "0x1.ffcbfcp-17", "0x1.430912p-13", "0x1.5d87fep-10", "0x1.3b2ab6p-7", "0x1.c6b08ep-5",
    "0x1.ebfbe0p-3", "0x1.62e430p-1", "0x1.0p+0"))
_LOG2E_FLOAT32 = float.fromhex("0x1.715476p+0")


def draw_exp(d: torch.Tensor) -> torch.Tensor:
    """exp(d) for float32 d <= 0, bit for bit as every kernel computes the draw's weights (rounding.h's draw_exp):
    2^t, t = d log2(e), as 2^floor(t) times a degree-8 Taylor polynomial of 2^(t - floor(t)), each operation one
    float32 rounding (torch's eager ops round once each), and 0 below t = -126."""
    t = torch.clamp_max(d * _LOG2E_FLOAT32, 0.0)
    k = torch.floor(t)
    f = t - k
    p = torch.full_like(f, _DRAW_EXP_TAYLOR[0])
    for c in _DRAW_EXP_TAYLOR[1:]:
        p = p * f + c
    scale = ((k.clamp_min(-126).to(torch.int32) + 127) << 23).view(torch.float32)
    return torch.where(t > -126, p * scale, torch.zeros_like(p))


def _output_index(shape, dim: int, device) -> torch.Tensor:
    """Logical (outer, group, inner) index of every output element: the Philox counter of its draw."""
    n = 1
    for s in shape:
        n *= s
    return torch.arange(n, dtype=torch.int64, device=device).reshape(shape)


def maxout_backward(grad_y: torch.Tensor, index: torch.Tensor, pieces: int, dim: int, grouping: str) -> torch.Tensor:
    """grad_x: each input gets its group's gradient if it is the chosen piece, else 0 (`_maxout_backward`)."""
    dim = dim % grad_y.dim()
    parts = [torch.where(index == p, grad_y, torch.zeros_like(grad_y)) for p in range(pieces)]
    if grouping == "contiguous":
        return torch.stack(parts, dim + 1).flatten(dim, dim + 1)
    return torch.stack(parts, dim).flatten(dim, dim + 1)


class _Maxout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pieces, dim, grouping, temperature=None, rng_state=None):
        values = [v.to(opmath_dtype(x.dtype)) for v in maxout_pieces(x, pieces, dim, grouping)]
        best, arg = _first_max(values)
        if temperature is not None:  # probabilistic maxout: a categorical draw per output element
            lam = torch.tensor(1.0 / temperature, dtype=best.dtype).item()  # in the compute type, as the kernels
            # The draw decides in float32 with draw_exp, whatever the dtype: the same piece on every backend. A
            # piece equal to the maximum weighs 1 (exp(inf - inf) would be NaN for a +inf maximum, whose softmax
            # limit draws it).
            weights = [torch.where(v == best, 1.0, draw_exp(((v - best) * lam).float())) for v in values]
            cumulative = [weights[0]]
            for w in weights[1:]:
                cumulative.append(cumulative[-1] + w)
            u = philox_uniform(rng_state, _output_index(best.shape, dim, x.device), stream=0)
            target = u * cumulative[-1]
            drawn = torch.full_like(arg, pieces - 1)
            for p in reversed(range(pieces)):
                drawn = torch.where(target < cumulative[p], torch.full_like(drawn, p), drawn)
            arg = torch.where(torch.isnan(best), arg, drawn)
            best = torch.gather(torch.stack(values), 0, arg.long().unsqueeze(0)).squeeze(0)
        ctx.save_for_backward(arg)
        ctx.args = (pieces, dim, grouping)
        ctx.mark_non_differentiable(arg)
        ctx.set_materialize_grads(False)
        return best.to(x.dtype), arg

    @staticmethod
    def backward(ctx, grad_y, _grad_index):
        (arg,) = ctx.saved_tensors
        if grad_y is None:
            return None, None, None, None, None, None
        return maxout_backward(grad_y, arg, *ctx.args), None, None, None, None, None


def maxout(x: torch.Tensor, pieces: int, dim: int, grouping: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, index): the maximum of each group of `pieces` along `dim` and the first winning piece as uint8."""
    return _Maxout.apply(x, pieces, dim, grouping)


def probabilistic_maxout(
    x: torch.Tensor, pieces: int, dim: int, grouping: str, temperature: float, rng_state: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, index, rng_state): piece i ~ softmax(z / temperature) per output element, drawn by inverse CDF with
    u = philox_uniform(rng_state, logical output index, stream 0) (`probabilistic_maxout`); the state is the
    explicit one, else drawn from the generator of x's device as the compiled op draws it (one stream). The
    gradient flows to the drawn piece."""
    if rng_state is not None:
        state = rng_state
    elif torch.compiler.is_compiling():
        # Dynamo traces neither Tensor.random_ (draw_state's exact random64()) nor the CUDA generator's
        # offset: under torch.compile the reference takes a traceable key instead (randint over the int64
        # range; not bit-equal to the compiled op's draw, which nothing compares under compile).
        seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=x.device)
        state = torch.cat([seed, torch.zeros_like(seed)])
    else:
        state = draw_state(x.device, 1)
    y, index = _Maxout.apply(x, pieces, dim, grouping, temperature, state)
    return y, index, state


def probabilistic_maxout_expectation(x: torch.Tensor, pieces: int, dim: int, grouping: str, temperature: float) -> torch.Tensor:
    """sum_i softmax(z / temperature)_i z_i, differentiated by PyTorch's autograd (an independent oracle of
    the kernels' hand-derived backward)."""
    z = torch.stack([v.to(opmath_dtype(x.dtype)) for v in maxout_pieces(x, pieces, dim, grouping)])
    return (torch.softmax(z / temperature, dim=0) * z).sum(0).to(x.dtype)
