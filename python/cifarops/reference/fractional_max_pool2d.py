"""Fractional max-pooling in pure PyTorch, argument for argument as its op (see the package's docstring)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from cifarops.philox import draw_state, philox_uniform
from cifarops.reference.common import opmath_dtype


FMP_REGIONS = ("window", "disjoint", "overlapping")
FMP_SEQUENCES = ("pseudorandom", "random")
# Philox streams of one call that draws (csrc/include/cifarops/fractional_max_pool2d.h): 0, the samples of
# pseudorandom sequences and windows; 1, the steps of random sequences.
FMP_SAMPLE_STREAM, FMP_SEQUENCE_STREAM, FMP_STREAMS = 0, 1, 2


def _fmp_dense_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last when stored that way, else NCHW (as csrc/args/common.h)."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def fmp_sample_from_uniform(u: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """u (float32 in [0, 1)) in `dtype`, rounded to nearest, never 1: where rounding reaches 1, the largest value
    of `dtype` below 1."""
    v = u.to(dtype)
    below_one = 1 - torch.finfo(dtype).eps / 2
    return torch.where(v >= 1, torch.full_like(v, below_one), v)


def fmp_drawn_samples(state: torch.Tensor, n: int, draw_channels: int, dtype: torch.dtype) -> torch.Tensor:
    """The (n, draw_channels, 2) samples a call draws from `state`: u of (n, c', axis) at logical index
    (n * C' + c') * 2 + axis of stream 0."""
    index = torch.arange(n * draw_channels * 2, dtype=torch.int64, device=state.device)
    u = philox_uniform(state, index, FMP_SAMPLE_STREAM)
    return fmp_sample_from_uniform(u, dtype).reshape(n, draw_channels, 2)


def fmp_drawn_boundaries(state: torch.Tensor, n: int, draw_channels: int, size_in, size_out) -> torch.Tensor:
    """The (n, draw_channels, 2, max(out) + 1) random sequences a call draws from `state` ([width, height]):
    selection sampling, step i of (n, c', axis) is 2 when bits24 * (out - i) < twos_left * 2^24, bits24 from the
    logical index ((n * C' + c') * 2 + axis) * max(out) + i of stream 1; padded with the input size."""
    max_out = max(size_out)
    planes = n * draw_channels
    device = state.device
    axes = []
    for axis, (i_, o) in enumerate(((size_in[1], size_out[1]), (size_in[0], size_out[0]))):
        base = (torch.arange(planes, dtype=torch.int64, device=device) * 2 + axis) * max_out
        index = base[:, None] + torch.arange(o, dtype=torch.int64, device=device)
        bits = (philox_uniform(state, index, FMP_SEQUENCE_STREAM) * 16777216.0).long()
        twos = torch.full((planes,), i_ - o, dtype=torch.int64, device=device)
        position = torch.zeros(planes, dtype=torch.int64, device=device)
        a = [position]
        for k in range(o):
            two = (bits[:, k] * (o - k) < twos * 16777216).long()
            twos = twos - two
            position = position + 1 + two
            a.append(position)
        a += [torch.full((planes,), i_, dtype=torch.int64, device=device)] * (max_out - o)
        axes.append(torch.stack(a, -1))
    return torch.stack(axes, 1).reshape(n, draw_channels, 2, max_out + 1)


def fmp_resolve_draws(n, c, size_in, size_out, samples, boundaries, sequence, per_image, rng_state, dtype, device,
                      may_draw_state: bool):
    """(samples, boundaries, state) of one call: the explicit draws with a zero state, else those drawn from
    rng_state (or, when `may_draw_state`, from torch's generator of `device`, as the compiled ops take it)."""
    if samples is not None or boundaries is not None:
        return samples, boundaries, torch.zeros(2, dtype=torch.int64, device=device)
    if rng_state is not None or not may_draw_state:
        state = rng_state
    elif torch.compiler.is_compiling() and torch.device(device).type == "cpu":
        # Dynamo cannot trace draw_state's in-place random_ on the CPU: a traceable draw (other numbers than the
        # compiled ops would take from the same generator state, still a fresh draw per call).
        seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=device)
        state = torch.cat([seed, torch.zeros_like(seed)])
    else:
        state = draw_state(device, FMP_STREAMS)
    draw_channels = 1 if per_image else c
    if sequence == "random":
        return None, fmp_drawn_boundaries(state, n, draw_channels, size_in, size_out).expand(n, c, 2, -1), state
    return fmp_drawn_samples(state, n, draw_channels, dtype).expand(n, c, 2), None, state


def fmp_span(regions: str, kernel: int) -> int:
    """The widest region along an axis: byte offsets inside a region are row * span_w + column."""
    return {"window": kernel, "disjoint": 2, "overlapping": 3}[regions]


def fmp_interval_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The type ATen computes its window starts in: the storage type on the CPU (half types round after every
    operation), the compute type on CUDA."""
    return dtype if torch.device(device).type == "cpu" else opmath_dtype(dtype)


def fmp_regions(
    size_in: int, size_out: int, kernel: int, regions: str, u: Optional[torch.Tensor], boundaries: Optional[torch.Tensor],
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(begin, end), int64 of shape (..., size_out): output i pools [begin_i, end_i) along one axis. u: (...,)
    samples in `dtype` (the input's); boundaries: (..., >= size_out + 1) int64. Same arithmetic as
    csrc/include/cifarops/fractional_max_pool2d.h, clamps included."""
    if regions == "window":
        t = fmp_interval_dtype(dtype, u.device)
        u = u.to(t).unsqueeze(-1)
        # Scalars filled on the device and divided there in t (no tensor from host data, no copy)
        alpha = (torch.scalar_tensor(size_in - kernel, dtype=t, device=u.device)
                 / torch.scalar_tensor(max(size_out - 1, 1), dtype=t, device=u.device))
        i = torch.arange(size_out, device=u.device).to(t)
        start = ((i + u) * alpha).to(torch.int32).long() - (u * alpha).to(torch.int32).long()
        start = start.clamp(0, size_in - kernel)
        start[..., -1] = size_in - kernel
        return start, start + kernel
    i = torch.arange(size_out + 1, device=(u if u is not None else boundaries).device)
    if boundaries is None:
        # Exactly floor(alpha (i + u)) - floor(alpha u), alpha = in / out: with W = floor(in u) (exact in float64
        # for samples of float32 or narrower), floor((in i + W) / out) - floor(W / out); see SPEC and
        # csrc/include/cifarops/fractional_max_pool2d.h. Every step is floor(alpha) or ceil(alpha).
        w = torch.floor(size_in * u.to(torch.float64).unsqueeze(-1)).long()
        a = torch.div(size_in * i + w, size_out, rounding_mode="floor") - torch.div(w, size_out, rounding_mode="floor")
    else:
        a = boundaries[..., : size_out + 1].clone()
    a = torch.minimum(torch.maximum(a, i), size_in - size_out + i)
    a[..., 0], a[..., size_out] = 0, size_in
    end = a[..., 1:] + (1 if regions == "overlapping" else 0)
    return a[..., :-1], end.clamp(max=size_in)


def _fmp_axes(grad_or_x_shape, input_size, output_size, kernel_size, regions, samples, boundaries, dtype):
    """(row_begin, row_end, col_begin, col_end), each (N, C, out) int64."""
    kh, kw = kernel_size if regions == "window" else (0, 0)
    rows = fmp_regions(input_size[0], output_size[0], kh, regions,
                       None if samples is None else samples[..., 1], None if boundaries is None else boundaries[:, :, 1],
                       dtype)
    cols = fmp_regions(input_size[1], output_size[1], kw, regions,
                       None if samples is None else samples[..., 0], None if boundaries is None else boundaries[:, :, 0],
                       dtype)
    return (*rows, *cols)


def _fmp_choice_to_flat(index, row_begin, row_end, col_begin, col_end, width, span_w):
    """Flat h * W + w of each output's choice, and whether it lies inside the output's region."""
    r0, r1 = row_begin.unsqueeze(-1), row_end.unsqueeze(-1)
    c0, c1 = col_begin.unsqueeze(-2), col_end.unsqueeze(-2)
    if index.dtype == torch.uint8:
        off = index.long()
        h, w = r0 + off // span_w, c0 + off % span_w
    else:
        flat = index.long()
        h, w = torch.div(flat, width, rounding_mode="floor"), flat % width
        h = torch.where(flat < 0, -1, h)
    inside = (h >= r0) & (h < r1) & (w >= c0) & (w < c1)
    return h * width + w, inside


def fractional_max_pool2d_backward(
    grad_y: torch.Tensor, index: torch.Tensor, input_size: Sequence[int], kernel_size: Sequence[int], regions: str,
    samples: Optional[torch.Tensor], boundaries: Optional[torch.Tensor], sequence: str = "pseudorandom",
    per_image: bool = False, rng_state: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """grad_x: each output's gradient added to the input it chose, in row-major output order, in the storage
    type (`_fractional_max_pool2d_backward`; ATen's CPU loop adds the same way). Draws from rng_state (the
    forward's) when neither samples nor boundaries are given."""
    n, c, out_h, out_w = grad_y.shape
    height, width = input_size
    samples, boundaries, _ = fmp_resolve_draws(n, c, (height, width), (out_h, out_w), samples, boundaries, sequence,
                                               per_image, rng_state, grad_y.dtype, grad_y.device, False)
    axes = _fmp_axes(grad_y.shape, input_size, (out_h, out_w), kernel_size, regions, samples, boundaries, grad_y.dtype)
    span_w = fmp_span(regions, kernel_size[1] if regions == "window" else 0)
    flat, inside = _fmp_choice_to_flat(index, *axes, width, span_w)
    # Global targets of the contributing outputs, in row-major output order; each round adds every target's
    # next contribution (at most one per target), rounding to the storage type as `grad_x[i] += g` does.
    plane = torch.arange(n * c, device=grad_y.device).reshape(n, c, 1, 1) * (height * width)
    targets = (plane + flat)[inside]
    grads = grad_y[inside].to(opmath_dtype(grad_y.dtype))
    if torch.compiler.is_compiling():  # the rounds below need a host read: add in the compute type instead
        grad_x = torch.zeros(n * c * height * width, dtype=grads.dtype, device=grad_y.device)
        return grad_x.index_add_(0, targets, grads).to(grad_y.dtype).reshape(n, c, height, width)
    grad_x = torch.zeros(n * c * height * width, dtype=grad_y.dtype, device=grad_y.device)
    if targets.numel():
        order = torch.sort(targets, stable=True).indices
        sorted_targets = targets[order]
        rank = torch.empty_like(order)
        positions = torch.arange(order.numel(), device=order.device)
        rank[order] = positions - torch.searchsorted(sorted_targets, sorted_targets, side="left")
        for r in range(int(rank.max()) + 1):
            chosen = rank == r
            t = targets[chosen]
            grad_x[t] = (grad_x[t].to(grads.dtype) + grads[chosen]).to(grad_y.dtype)
    return grad_x.reshape(n, c, height, width).contiguous(memory_format=_fmp_dense_format(index))


def fractional_max_pool2d_select(
    values: torch.Tensor, index: torch.Tensor, kernel_size: Sequence[int], regions: str,
    samples: Optional[torch.Tensor], boundaries: Optional[torch.Tensor], sequence: str = "pseudorandom",
    per_image: bool = False, rng_state: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """values (input-shaped) at each output's choice, 0 where the choice lies outside the output's region: the
    gradient of the backward op with respect to grad_y (double backward)."""
    n, c, height, width = values.shape
    samples, boundaries, _ = fmp_resolve_draws(n, c, (height, width), tuple(index.shape[2:]), samples, boundaries,
                                               sequence, per_image, rng_state, values.dtype, values.device, False)
    axes = _fmp_axes(values.shape, (height, width), index.shape[2:], kernel_size, regions, samples, boundaries,
                     values.dtype)
    flat, inside = _fmp_choice_to_flat(index, *axes, width, fmp_span(regions, kernel_size[1] if regions == "window" else 0))
    picked = torch.gather(values.reshape(n, c, -1), 2, torch.where(inside, flat, 0).reshape(n, c, -1))
    return torch.where(inside, picked.reshape(index.shape), torch.zeros_like(picked).reshape(index.shape))


class _FractionalMaxPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, output_size, regions, samples, boundaries, return_indices):
        n, c, height, width = x.shape
        out_h, out_w = output_size
        r0, r1, c0, c1 = _fmp_axes(x.shape, (height, width), output_size, kernel_size, regions, samples, boundaries, x.dtype)
        kh, kw = kernel_size if regions == "window" else (0, 0)
        span_h, span_w = fmp_span(regions, kh), fmp_span(regions, kw)
        # Every (dh, dw) of the widest region, masked to the real one: (N, C, out_h, out_w, span_h * span_w).
        dh = torch.arange(span_h, device=x.device).repeat_interleave(span_w)
        dw = torch.arange(span_w, device=x.device).repeat(span_h)
        h = r0[:, :, :, None, None] + dh
        w = c0[:, :, None, :, None] + dw
        valid = (h < r1[:, :, :, None, None]) & (w < c1[:, :, None, :, None])
        flat = (h.clamp(max=height - 1) * width + w.clamp(max=width - 1)).reshape(n, c, -1)
        values = torch.gather(x.reshape(n, c, -1), 2, flat).reshape(valid.shape)
        values = torch.where(valid, values, torch.full_like(values, float("-inf")))
        # ATen's `v > best || isnan(v)` scan: the last NaN if there is one, else the first maximum.
        nan = torch.isnan(values)
        last_nan = nan.shape[-1] - 1 - torch.argmax(nan.flip(-1).to(torch.uint8), -1)
        first_max = torch.argmax(torch.where(nan, torch.full_like(values, float("-inf")), values).to(opmath_dtype(x.dtype)), -1)
        offset = torch.where(nan.any(-1), last_nan, first_max)
        y = torch.gather(values, -1, offset.unsqueeze(-1)).squeeze(-1)
        if return_indices or span_h * span_w > 256:
            chosen_h = torch.gather(h.expand(valid.shape), -1, offset.unsqueeze(-1)).squeeze(-1)
            chosen_w = torch.gather(w.expand(valid.shape), -1, offset.unsqueeze(-1)).squeeze(-1)
            index = chosen_h * width + chosen_w
        else:
            index = offset.to(torch.uint8)
        fmt = _fmp_dense_format(x)
        y, index = y.contiguous(memory_format=fmt), index.contiguous(memory_format=fmt)
        ctx.save_for_backward(index, samples, boundaries)
        ctx.args = ((height, width), kernel_size, regions)
        ctx.mark_non_differentiable(index)
        return y, index

    @staticmethod
    def backward(ctx, grad_y, _grad_index):
        index, samples, boundaries = ctx.saved_tensors
        input_size, kernel_size, regions = ctx.args
        grad_x = fractional_max_pool2d_backward(grad_y, index, input_size, kernel_size, regions, samples, boundaries)
        return grad_x, None, None, None, None, None, None


def fractional_max_pool2d(
    x: torch.Tensor, kernel_size: Sequence[int], output_size: Sequence[int], regions: str,
    samples: Optional[torch.Tensor], boundaries: Optional[torch.Tensor], return_indices: bool,
    sequence: str = "pseudorandom", per_image: bool = False, rng_state: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, index, state) of the `fractional_max_pool2d` op: the maximum of each region and its position, as
    PyTorch's int64 flat index (return_indices) or a uint8 offset row * span_w + column inside the region, and
    the RNG state the draws came from (zeros for explicit draws). With neither samples nor boundaries the draws
    come from rng_state, else from torch's generator (philox.draw_state, as the compiled ops take it)."""
    n, c = x.shape[0], x.shape[1]
    samples, boundaries, state = fmp_resolve_draws(n, c, tuple(x.shape[2:]), tuple(output_size), samples, boundaries,
                                                   sequence, per_image, rng_state, x.dtype, x.device, True)
    y, index = _FractionalMaxPool2d.apply(x, kernel_size, output_size, regions, samples, boundaries, return_indices)
    return y, index, state
