"""Fractional max-pooling in Triton (math of csrc/include/cifarops/fractional_max_pool2d.h): forward over
outputs, backward over inputs, each input gathering from the outputs whose regions contain it (found by
binary search: region ends never decrease), so no atomics. CHANNEL_FASTEST orders the lanes so that
neighbouring lanes touch neighbouring addresses in channels_last.

Window starts follow ATen's interval arithmetic: in the compute type on CUDA; on CPU tensors (the
interpreter) ROUND rounds to the storage type after every operation, as ATen's CPU kernel does.

Draws made by the op (DRAW: neither samples nor boundaries) come from the call's RNG state, loaded in the
kernel, with the Philox streams of csrc/include/cifarops/fractional_max_pool2d.h: the samples in the kernels
themselves, random sequences in a boundary table written by _fmp_table_kernel first."""

import contextlib

import torch
import triton
import triton.language as tl

from cifarops.triton_kernels.philox import bits_to_uniform, load_state, philox_quad

BLOCK = 256
# Launch options by kernel (cifarops.triton_kernels.variants compiles with the same). The backward's binary
# searches need registers: with ptxas' own limit, Graham's regions from a boundary table spilled on sm_80
# (tests/test_build.py compiles every variant and fails on local memory); 128 registers a thread do not. The
# forward runs one output a thread (8 warps for 256): with two, triton 3.6 (torch 2.11's) spilled the half-precision
# Graham regions with int64 indices on sm_80.
LAUNCH_OPTIONS = {"_fmp_fwd_kernel": {"num_warps": 8}, "_fmp_bwd_kernel": {"maxnreg": 128}}
REGIONS = {"window": 0, "disjoint": 1, "overlapping": 2}


@triton.jit
def _rounded(v, STORE: tl.constexpr, ROUND: tl.constexpr):
    """v (float32) rounded to the storage type and back, when ROUND. bfloat16 rounds to nearest even by its
    bits: the interpreter's own float32 -> bfloat16 cast truncates."""
    if ROUND:
        if STORE == tl.bfloat16:
            bits = v.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            v = bits.to(tl.float32, bitcast=True)
        else:
            v = v.to(STORE).to(v.dtype)
    return v


@triton.jit
def _boundary(i, u, bnd_ptr, bnd_stride, size_in, size_out, mask, EXPLICIT: tl.constexpr):
    """Graham's a_i: read from the boundary table or pseudorandom from u, clamped to [i, in - out + i]. The
    pseudorandom a_i = floor((in i + W) / out) - floor(W / out), W = floor(in u) in float64: the exact
    floor(alpha (i + u)) - floor(alpha u), as csrc/include/cifarops/fractional_max_pool2d.h computes it."""
    if EXPLICIT:
        raw = tl.load(bnd_ptr + i * bnd_stride, mask=mask & (i > 0) & (i < size_out), other=0)
    else:
        n_in = size_in.to(tl.int64)
        w = tl.floor(n_in.to(tl.float64) * u.to(tl.float64)).to(tl.int64)
        raw = (n_in * i.to(tl.int64) + w) // size_out - w // size_out
    a = tl.minimum(tl.maximum(raw, i.to(tl.int64)), size_in - size_out + i)
    a = tl.where(i <= 0, 0, a)
    return tl.where(i >= size_out, size_in, a)


@triton.jit
def _region(i, u, bnd_ptr, bnd_stride, size_in, size_out, kernel, alpha, mask,
            REGIONS: tl.constexpr, EXPLICIT: tl.constexpr, ROUND: tl.constexpr, STORE: tl.constexpr):
    """[begin, end) of output i along one axis."""
    if REGIONS == 0:
        shifted = _rounded(_rounded(i.to(u.dtype), STORE, ROUND) + u, STORE, ROUND)
        start = (_rounded(shifted * alpha, STORE, ROUND).to(tl.int32) - _rounded(u * alpha, STORE, ROUND).to(tl.int32))
        start = tl.minimum(tl.maximum(start.to(tl.int64), 0), size_in - kernel)
        start = tl.where(i >= size_out - 1, size_in - kernel, start)
        return start, start + kernel
    begin = _boundary(i, u, bnd_ptr, bnd_stride, size_in, size_out, mask, EXPLICIT)
    end = _boundary(i + 1, u, bnd_ptr, bnd_stride, size_in, size_out, mask, EXPLICIT)
    if REGIONS == 2:
        end = tl.minimum(end + 1, size_in)
    return begin, end


@triton.jit
def _search(x, u, bnd_ptr, bnd_stride, size_in, size_out, kernel, alpha, mask, steps, BY_END: tl.constexpr,
            REGIONS: tl.constexpr, EXPLICIT: tl.constexpr, ROUND: tl.constexpr, STORE: tl.constexpr):
    """The first output whose region ends after x (BY_END) or begins after x: binary search in `steps` rounds."""
    lo = tl.zeros(x.shape, tl.int64)
    hi = tl.zeros(x.shape, tl.int64) + size_out
    for _ in range(0, steps):
        active = lo < hi
        mid = lo + (hi - lo) // 2
        begin, end = _region(mid, u, bnd_ptr, bnd_stride, size_in, size_out, kernel, alpha, mask,
                             REGIONS, EXPLICIT, ROUND, STORE)
        if BY_END:
            left = end > x
        else:
            left = begin > x
        hi = tl.where(active & left, mid, hi)
        lo = tl.where(active & (left == 0), mid + 1, lo)
    return lo


@triton.jit
def _as_storage(u, sample_max, STORE: tl.constexpr):
    """A drawn float32 u in the storage type, rounded to nearest even, never 1 (then the largest value below 1),
    back as float32. bfloat16 rounds by its bits: the interpreter's own cast truncates."""
    if STORE == tl.bfloat16:
        bits = u.to(tl.uint32, bitcast=True)
        v = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    elif STORE == tl.float16:
        v = u.to(tl.float16).to(tl.float32)
    else:
        v = u
    return tl.where(v < 1.0, v, sample_max)


@triton.jit
def _samples(ptr, axis_stride, mask, state_ptr, n, c, draw_channels, sample_max, acc: tl.constexpr,
             EXPLICIT: tl.constexpr, DRAW: tl.constexpr, STORE: tl.constexpr):
    """(u_w, u_h) of each lane's plane in the compute type: drawn (stream 0 at (n * C' + c') * 2 + axis), or
    loaded; zeros when the boundaries are explicit."""
    u_w = tl.zeros(mask.shape, acc)
    u_h = tl.zeros(mask.shape, acc)
    if DRAW:
        seed, offset = load_state(state_ptr)
        index = (n * draw_channels + tl.where(draw_channels == 1, 0, c)) * 2
        # index is even: both axes' words are in one quad (words 0 and 1, or 2 and 3), one Philox call
        w0, w1, w2, w3 = philox_quad(seed, offset, index >> 2, 0)
        low = (index & 3) == 0
        u_w = _as_storage(bits_to_uniform(tl.where(low, w0, w2)), sample_max, STORE).to(acc)
        u_h = _as_storage(bits_to_uniform(tl.where(low, w1, w3)), sample_max, STORE).to(acc)
    elif not EXPLICIT:
        u_w = tl.load(ptr, mask=mask, other=0).to(acc)
        u_h = tl.load(ptr + axis_stride, mask=mask, other=0).to(acc)
    return u_w, u_h


@triton.jit
def _fmp_table_kernel(state_ptr, table_ptr, lanes, in_w, out_w, in_h, out_h, max_out, length, BLOCK: tl.constexpr):
    """Random sequences: one lane per (draw plane, axis), a_0 .. a_out by selection sampling (stream 1), padded
    with the input size; table (planes, 2, length) int64, contiguous."""
    t = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = t < lanes
    axis = t % 2
    size_in = tl.where(axis == 0, in_w, in_h).to(tl.int64)
    size_out = tl.where(axis == 0, out_w, out_h).to(tl.int64)
    seed, offset = load_state(state_ptr)
    base = t * max_out
    twos = size_in - size_out
    position = tl.zeros([BLOCK], tl.int64)
    row = table_ptr + t * length
    tl.store(row, position, mask=mask)
    for i in range(0, max_out):
        index = base + i
        w0, w1, w2, w3 = philox_quad(seed, offset, index >> 2, 1)
        lane = index & 3
        word = tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3)))
        bits = (word >> 8).to(tl.int64)
        active = i < size_out
        two = active & (bits * (size_out - i) < twos * 16777216)
        twos = twos - two.to(tl.int64)
        position = position + 1 + two.to(tl.int64)
        tl.store(row + i + 1, tl.where(active, position, size_in), mask=mask)


@triton.jit
def _split(t, channels, height, width, CHANNEL_FASTEST: tl.constexpr, SMALL: tl.constexpr):
    """(n, c, h, w) of flat index t, as int64. SMALL (every t of the grid below 2^31): 32-bit divisions, a fraction of the
    instructions of 64-bit ones (a subroutine on the GPU)."""
    if SMALL:
        t = t.to(tl.int32)
    if CHANNEL_FASTEST:
        c = t % channels
        w = (t // channels) % width
        h = (t // channels // width) % height
        n = t // channels // width // height
    else:
        w = t % width
        h = (t // width) % height
        c = (t // width // height) % channels
        n = t // width // height // channels
    return n.to(tl.int64), c.to(tl.int64), h.to(tl.int64), w.to(tl.int64)


@triton.jit
def _fmp_fwd_kernel(
    x_ptr, y_ptr, index_ptr, samples_ptr, bnd_ptr, alpha_ptr, state_ptr, total, channels, in_h, in_w, out_h, out_w, k_h,
    k_w, xs_n, xs_c, xs_h, xs_w, ys_n, ys_c, ys_h, ys_w, ss_n, ss_c, ss_a, bs_n, bs_c, bs_a, bs_i, draw_channels,
    sample_max, REGIONS: tl.constexpr, EXPLICIT: tl.constexpr, DRAW: tl.constexpr, WIDE: tl.constexpr, ROUND: tl.constexpr,
    CHANNEL_FASTEST: tl.constexpr, SPAN_H: tl.constexpr, SPAN_W: tl.constexpr, SMALL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = t < total
    n, c, oh, ow = _split(t, channels, out_h, out_w, CHANNEL_FASTEST, SMALL)
    STORE: tl.constexpr = x_ptr.dtype.element_ty
    acc: tl.constexpr = alpha_ptr.dtype.element_ty
    alpha_w, alpha_h = tl.load(alpha_ptr), tl.load(alpha_ptr + 1)
    u_w, u_h = _samples(samples_ptr + n * ss_n + c * ss_c, ss_a, mask, state_ptr, n, c, draw_channels, sample_max, acc,
                        EXPLICIT, DRAW, STORE)
    bnd = bnd_ptr + n * bs_n + c * bs_c
    r0, r1 = _region(oh, u_h, bnd + bs_a, bs_i, in_h, out_h, k_h, alpha_h, mask, REGIONS, EXPLICIT, ROUND, STORE)
    c0, c1 = _region(ow, u_w, bnd, bs_i, in_w, out_w, k_w, alpha_w, mask, REGIONS, EXPLICIT, ROUND, STORE)
    base = n * xs_n + c * xs_c
    y = tl.load(x_ptr + base + r0 * xs_h + c0 * xs_w, mask=mask, other=0)
    best = tl.full([BLOCK], float("-inf"), acc)
    offset = tl.zeros([BLOCK], tl.int32)
    for dh in range(0, SPAN_H):  # ATen's row-major scan: first maximum, last NaN
        for dw in range(0, SPAN_W):
            valid = mask & (r0 + dh < r1) & (c0 + dw < c1)
            raw = tl.load(x_ptr + base + (r0 + dh) * xs_h + (c0 + dw) * xs_w, mask=valid, other=float("-inf"))
            v = raw.to(acc)
            take = valid & ((v > best) | (v != v))
            best = tl.where(take, v, best)
            y = tl.where(take, raw, y)
            offset = tl.where(take, dh * SPAN_W + dw, offset)
    out = n * ys_n + c * ys_c + oh * ys_h + ow * ys_w
    tl.store(y_ptr + out, y, mask=mask)
    if WIDE:
        tl.store(index_ptr + out, (r0 + offset // SPAN_W) * in_w + c0 + offset % SPAN_W, mask=mask)
    else:
        tl.store(index_ptr + out, offset.to(tl.uint8), mask=mask)


@triton.jit
def _fmp_bwd_kernel(
    grad_y_ptr, index_ptr, grad_x_ptr, samples_ptr, bnd_ptr, alpha_ptr, state_ptr, total, channels, in_h, in_w, out_h,
    out_w, k_h, k_w, xs_n, xs_c, xs_h, xs_w, ys_n, ys_c, ys_h, ys_w, ss_n, ss_c, ss_a, bs_n, bs_c, bs_a, bs_i, steps_h,
    steps_w, draw_channels, sample_max, REGIONS: tl.constexpr, EXPLICIT: tl.constexpr, DRAW: tl.constexpr,
    WIDE: tl.constexpr, ROUND: tl.constexpr,
    CHANNEL_FASTEST: tl.constexpr, SPAN_W: tl.constexpr, SMALL: tl.constexpr, BLOCK: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = t < total
    n, c, h, w = _split(t, channels, in_h, in_w, CHANNEL_FASTEST, SMALL)
    STORE: tl.constexpr = grad_x_ptr.dtype.element_ty
    acc: tl.constexpr = alpha_ptr.dtype.element_ty
    alpha_w, alpha_h = tl.load(alpha_ptr), tl.load(alpha_ptr + 1)
    u_w, u_h = _samples(samples_ptr + n * ss_n + c * ss_c, ss_a, mask, state_ptr, n, c, draw_channels, sample_max, acc,
                        EXPLICIT, DRAW, STORE)
    bnd = bnd_ptr + n * bs_n + c * bs_c
    # The outputs whose regions contain (h, w): rows [lo_h, hi_h) x columns [lo_w, hi_w).
    lo_h = _search(h, u_h, bnd + bs_a, bs_i, in_h, out_h, k_h, alpha_h, mask, steps_h, True, REGIONS, EXPLICIT, ROUND, STORE)
    hi_h = _search(h, u_h, bnd + bs_a, bs_i, in_h, out_h, k_h, alpha_h, mask, steps_h, False, REGIONS, EXPLICIT, ROUND, STORE)
    lo_w = _search(w, u_w, bnd, bs_i, in_w, out_w, k_w, alpha_w, mask, steps_w, True, REGIONS, EXPLICIT, ROUND, STORE)
    hi_w = _search(w, u_w, bnd, bs_i, in_w, out_w, k_w, alpha_w, mask, steps_w, False, REGIONS, EXPLICIT, ROUND, STORE)
    rows = tl.max(tl.where(mask, hi_h - lo_h, 0), 0)
    cols = tl.max(tl.where(mask, hi_w - lo_w, 0), 0)
    target = h * in_w + w
    total_grad = tl.zeros([BLOCK], STORE)
    for i in range(0, rows):  # row-major output order, rounding after each addition as ATen's CPU loop
        oh = lo_h + i
        r0, _ = _region(oh, u_h, bnd + bs_a, bs_i, in_h, out_h, k_h, alpha_h, mask, REGIONS, EXPLICIT, ROUND, STORE)
        for j in range(0, cols):
            ow = lo_w + j
            c0, _ = _region(ow, u_w, bnd, bs_i, in_w, out_w, k_w, alpha_w, mask, REGIONS, EXPLICIT, ROUND, STORE)
            valid = mask & (oh < hi_h) & (ow < hi_w)
            out = n * ys_n + c * ys_c + oh * ys_h + ow * ys_w
            choice = tl.load(index_ptr + out, mask=valid, other=0)
            if WIDE:
                chosen = choice
            else:
                offset = choice.to(tl.int64)
                chosen = (r0 + offset // SPAN_W) * in_w + c0 + offset % SPAN_W
            hit = valid & (chosen == target)
            g = tl.load(grad_y_ptr + out, mask=hit, other=0)
            total_grad = tl.where(hit, _rounded(total_grad.to(acc) + g.to(acc), STORE, ROUND).to(STORE), total_grad)
    tl.store(grad_x_ptr + n * xs_n + c * xs_c + h * xs_h + w * xs_w, total_grad, mask=mask)


def _draws(samples, boundaries, like):
    """Kernel arguments for the draws: pointers (a dummy for the absent one) and strides."""
    if boundaries is not None:
        return like, boundaries, (0, 0, 0), tuple(boundaries.stride())
    if samples is None:  # drawn in the kernel
        return like, like, (0, 0, 0), (0, 0, 0, 0)
    return samples, samples, tuple(samples.stride()), (0, 0, 0, 0)


def _common(x_like, kernel_size, regions):
    """Window sizes, region spans, and whether window starts round to the storage type (CPU semantics)."""
    k_h, k_w = kernel_size if regions == "window" else (0, 0)
    span_h, span_w = ({"window": (k_h, k_w), "disjoint": (2, 2), "overlapping": (3, 3)})[regions]
    round_each = x_like.device.type == "cpu" and x_like.dtype in (torch.float16, torch.bfloat16)
    return k_h, k_w, span_h, span_w, round_each


def _guard(t):
    """The tensor's device current around a launch (tensors on cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _sequence_table(state, batch, draw_channels, size_in, size_out, device):
    """Random sequences drawn from `state`: (N, C' , 2, max(out) + 1) int64, expanded to the channels."""
    max_out = max(size_out)
    table = torch.empty(batch, draw_channels, 2, max_out + 1, dtype=torch.int64, device=device)
    lanes = batch * draw_channels * 2
    if lanes:
        _fmp_table_kernel[(triton.cdiv(lanes, 128),)](
            state, table, lanes, size_in[1], size_out[1], size_in[0], size_out[0], max_out, max_out + 1, BLOCK=128)
    return table


def _resolve(state, random, batch, channels, draw_channels, size_in, size_out, samples, boundaries, device):
    """(samples, boundaries, DRAW) for the main kernel: random sequences become a boundary table first."""
    if state is None:
        return samples, boundaries, False
    if random:
        table = _sequence_table(state, batch, draw_channels, size_in, size_out, device)
        return None, table.expand(batch, channels, -1, -1), False
    return None, None, True


def fmp_fwd(x, y, index, samples, boundaries, kernel_size, regions, alpha, state=None, random=False, draw_channels=1,
            sample_max=0.0):
    """Launches the forward kernel into y and index; tensors are laid out by cifarops.ops.fractional_max_pool2d.
    alpha: (2,) tensor, [width, height], in the interval arithmetic's type (float64 for float64 input). state:
    the RNG state to draw from when neither samples nor boundaries are given."""
    with _guard(x):
        samples, boundaries, draw = _resolve(state, random, x.shape[0], x.shape[1], draw_channels, tuple(x.shape[2:]),
                                             tuple(y.shape[2:]), samples, boundaries, x.device)
        if y.numel() == 0:
            return
        k_h, k_w, span_h, span_w, round_each = _common(x, kernel_size, regions)
        samples_arg, bnd_arg, s_strides, b_strides = _draws(samples, boundaries, x)
        grid = (triton.cdiv(y.numel(), BLOCK),)
        _fmp_fwd_kernel[grid](
            x, y, index, samples_arg, bnd_arg, alpha, state if draw else alpha, y.numel(), x.shape[1], x.shape[2],
            x.shape[3], y.shape[2], y.shape[3], k_h, k_w, *x.stride(), *y.stride(), *s_strides, *b_strides,
            draw_channels, sample_max,
            REGIONS=REGIONS[regions], EXPLICIT=boundaries is not None, DRAW=draw, WIDE=index.dtype == torch.int64,
            ROUND=round_each, CHANNEL_FASTEST=x.stride(1) < x.stride(3), SPAN_H=span_h, SPAN_W=span_w,
            SMALL=y.numel() + BLOCK < 2**31, BLOCK=BLOCK,
            **LAUNCH_OPTIONS["_fmp_fwd_kernel"],
        )


def fmp_bwd(grad_y, index, grad_x, samples, boundaries, kernel_size, regions, alpha, state=None, random=False,
            draw_channels=1, sample_max=0.0):
    """Launches the backward (gather) kernel into grad_x."""
    with _guard(grad_x):
        out_h, out_w = grad_y.shape[2], grad_y.shape[3]
        samples, boundaries, draw = _resolve(state, random, grad_x.shape[0], grad_x.shape[1], draw_channels,
                                             tuple(grad_x.shape[2:]), (out_h, out_w), samples, boundaries, grad_x.device)
        if grad_x.numel() == 0:
            return
        k_h, k_w, _, span_w, round_each = _common(grad_x, kernel_size, regions)
        samples_arg, bnd_arg, s_strides, b_strides = _draws(samples, boundaries, grad_x)
        grid = (triton.cdiv(grad_x.numel(), BLOCK),)
        _fmp_bwd_kernel[grid](
            grad_y, index, grad_x, samples_arg, bnd_arg, alpha, state if draw else alpha, grad_x.numel(),
            grad_x.shape[1], grad_x.shape[2], grad_x.shape[3], out_h, out_w, k_h, k_w, *grad_x.stride(),
            *grad_y.stride(), *s_strides, *b_strides, out_h.bit_length(), out_w.bit_length(), draw_channels, sample_max,
            REGIONS=REGIONS[regions], EXPLICIT=boundaries is not None, DRAW=draw, WIDE=index.dtype == torch.int64,
            ROUND=round_each, CHANNEL_FASTEST=grad_x.stride(1) < grad_x.stride(3), SPAN_W=span_w,
            SMALL=grad_x.numel() + BLOCK < 2**31, BLOCK=BLOCK,
            **LAUNCH_OPTIONS["_fmp_bwd_kernel"],
        )
