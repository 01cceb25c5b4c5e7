"""Maxout and probabilistic maxout in Triton (math of csrc/include/cifarops/maxout.h): forward over output
elements, backward over input elements, on the (outer, C, inner) view of the tensor, in 2-D tiles (_tile) whose
columns run along the unit-stride axis: neighbouring lanes touch neighbouring addresses, and the index splits are
made per row, not per element. CHANNEL_FASTEST puts the channels on the columns (channels_last).

The probabilistic draw is the compiled kernels': u = philox_uniform(state, logical output index in
(outer, groups, inner) order, stream 0), with the state {seed, offset} read from a 2-element int64 tensor in
the kernel, and the piece decided in float32 with _draw_exp, bit for bit as every backend decides it.
lambda = 1 / temperature comes as the bits of a float64 (Triton's float scalars are float32), so a
launch builds no tensor."""

import struct

import torch
import triton
import triton.language as tl

from cifarops.triton_kernels.philox import load_state, philox_uniform

BLOCK = 512
MODE_MAX, MODE_SAMPLE, MODE_EXPECTATION = 0, 1, 2
# No fused multiply-adds in the forward: the draw rounds once per operation, as every backend does (rounding.h).
# maxnreg 128: with Triton's default limit ptxas kept a 64-bit value in local memory in the float32 draw's 32-bit
# variant on sm_90, and with 8 warps in the float64 draw's (tests/test_build.py and scripts/kernel_report.py fail
# on local memory).
LAUNCH_OPTIONS = {"_maxout_fwd_kernel": {"enable_fp_fusion": False, "maxnreg": 128}}


@triton.jit
def _tile(middle, inner, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr, CHANNEL_FASTEST: tl.constexpr):
    """The program's tile of an (outer, middle, inner) grid: BLOCK // BLOCK_C rows by BLOCK_C columns, rows
    (outer, middle) and columns inner in NCHW order, rows (outer, inner) and columns middle with the channels
    fastest. Returns o, m, i (broadcasting to the tile: a row's indices are divided out once per row, not once per
    element) and the columns' bound; rows past the end have o >= outer."""
    BLOCK_R: tl.constexpr = BLOCK // BLOCK_C
    cols = middle if CHANNEL_FASTEST else inner
    col_blocks = tl.cdiv(cols, BLOCK_C)
    pid = tl.program_id(0).to(tl.int64)
    row = (pid // col_blocks) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    col = (pid % col_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    if CHANNEL_FASTEST:
        o = row // inner
        i = row % inner
        m = col
    else:
        o = row // middle
        m = row % middle
        i = col
    return o, m, i, col < cols


@triton.jit
def _channel_of(j, piece, groups, pieces, STRIDED: tl.constexpr):
    if STRIDED:
        return piece * groups + j
    return j * pieces + piece


@triton.jit
def _draw_exp(d):
    """exp(d) for float32 d <= 0, as csrc/include/cifarops/rounding.h's draw_exp computes it (the launch turns off
    fused multiply-adds, so each operation rounds once)."""
    t = tl.minimum(d * 1.4426950216293335, 0.0)  # log2(e) in float32
    k = tl.floor(t)
    f = t - k
    p = f * 1.3215486660556053e-06 + 1.5252733646775596e-05  # ln(2)^n / n! in float32, n = 8 down to 0
    p = p * f + 0.0001540352968731895
    p = p * f + 0.0013333557872101665
    p = p * f + 0.009618128649890423
    p = p * f + 0.05550410971045494
    p = p * f + 0.24022650718688965
    p = p * f + 0.6931471824645996
    p = p * f + 1.0
    scale = ((tl.maximum(k, -126.0).to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)
    return tl.where(t > -126.0, p * scale, 0.0)


@triton.jit
def _draw_weight(v, best, lam):
    """The draw's float32 weight of piece value v (maxout.h's weight): 1 for the maximum (also a +inf one, where
    exp(inf - inf) would be NaN), else _draw_exp(lambda (v - max))."""
    return tl.where(v == best, 1.0, _draw_exp((lam * (v - best)).to(tl.float32)))


@triton.jit
def _maxout_fwd_kernel(
    x_ptr, y_ptr, index_ptr, state_ptr, lambda_bits, outer, groups, inner, pieces,
    xs_o, xs_c, xs_i, ys_o, ys_c, ys_i,
    MODE: tl.constexpr, STRIDED: tl.constexpr, CHANNEL_FASTEST: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    o, j, i, in_cols = _tile(groups, inner, BLOCK, BLOCK_C, CHANNEL_FASTEST)
    # Rows by o < outer (int64), not by a flat count: Triton passes sizes below 2^31 as int32, whose product wraps.
    mask = (o < outer) & in_cols
    base = o * xs_o + i * xs_i
    best = tl.load(x_ptr + base + _channel_of(j, 0, groups, pieces, STRIDED) * xs_c, mask=mask, other=0)
    best = best.to(tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32)
    arg = tl.zeros([BLOCK // BLOCK_C, BLOCK_C], tl.int32)
    for piece in range(1, pieces):  # first maximum; a NaN wins and stays
        v = tl.load(x_ptr + base + _channel_of(j, piece, groups, pieces, STRIDED) * xs_c, mask=mask, other=0)
        v = v.to(best.dtype)
        take = (best == best) & ((v > best) | (v != v))
        best = tl.where(take, v, best)
        arg = tl.where(take, piece, arg).to(tl.int32)  # piece is i32 or i64, as Triton specialises pieces
    y = best
    if MODE != 0:
        lam = lambda_bits.to(tl.int64).to(tl.float64, bitcast=True).to(best.dtype)
    if MODE == 2:
        total = tl.zeros([BLOCK // BLOCK_C, BLOCK_C], best.dtype)
        weighted = tl.zeros([BLOCK // BLOCK_C, BLOCK_C], best.dtype)
        for piece in range(0, pieces):
            v = tl.load(x_ptr + base + _channel_of(j, piece, groups, pieces, STRIDED) * xs_c, mask=mask, other=0)
            v = v.to(best.dtype)
            w = tl.exp(lam * (v - best))
            total += w
            weighted += w * v
        y = tl.where(best == best, weighted / total, best)
    if MODE == 1:
        # The draw decides in float32 with _draw_weight, launched without fused multiply-adds: the same piece as
        # every backend (maxout.h).
        total = tl.zeros([BLOCK // BLOCK_C, BLOCK_C], tl.float32)
        for piece in range(0, pieces):
            v = tl.load(x_ptr + base + _channel_of(j, piece, groups, pieces, STRIDED) * xs_c, mask=mask, other=0)
            v = v.to(best.dtype)
            total += _draw_weight(v, best, lam)
        seed, offset = load_state(state_ptr)
        target = philox_uniform(seed, offset, (o * groups + j) * inner + i, 0) * total
        cumulative = tl.zeros([BLOCK // BLOCK_C, BLOCK_C], tl.float32)
        drawn = (tl.zeros([BLOCK // BLOCK_C, BLOCK_C], tl.int32) + (pieces - 1)).to(tl.int32)
        found = tl.zeros([BLOCK // BLOCK_C, BLOCK_C], tl.int32)
        for piece in range(0, pieces):
            v = tl.load(x_ptr + base + _channel_of(j, piece, groups, pieces, STRIDED) * xs_c, mask=mask, other=0)
            v = v.to(best.dtype)
            cumulative += _draw_weight(v, best, lam)
            hit = (target < cumulative) & (found == 0)
            drawn = tl.where(hit, piece, drawn).to(tl.int32)
            found = found | hit.to(tl.int32)
        arg = tl.where(best == best, drawn, arg)
        y = tl.load(x_ptr + base + _channel_of(j, arg, groups, pieces, STRIDED) * xs_c, mask=mask, other=0)
        y = y.to(best.dtype)
    out = o * ys_o + j * ys_c + i * ys_i
    tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=mask)
    if MODE != 2:
        tl.store(index_ptr + out, arg.to(tl.uint8), mask=mask)


@triton.jit
def _maxout_bwd_kernel(
    grad_y_ptr, index_ptr, x_ptr, grad_x_ptr, lambda_bits, outer, channels, inner, pieces,
    xs_o, xs_c, xs_i, ys_o, ys_c, ys_i,
    EXPECTATION: tl.constexpr, STRIDED: tl.constexpr, CHANNEL_FASTEST: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    o, c, i, in_cols = _tile(channels, inner, BLOCK, BLOCK_C, CHANNEL_FASTEST)
    mask = (o < outer) & in_cols  # as in the forward kernel
    groups = channels // pieces
    if STRIDED:
        j = c % groups
        own = c // groups
    else:
        j = c // pieces
        own = c % pieces
    out = o * ys_o + j * ys_c + i * ys_i
    dy = tl.load(grad_y_ptr + out, mask=mask, other=0)
    if EXPECTATION:
        # dy * p_c * (1 + lambda (z_c - y)): the softmax-weighted gradient with the softmax's own derivative.
        base = o * xs_o + i * xs_i
        acc_dtype = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
        best = tl.load(x_ptr + base + _channel_of(j, 0, groups, pieces, STRIDED) * xs_c, mask=mask, other=0).to(acc_dtype)
        for piece in range(1, pieces):
            v = tl.load(x_ptr + base + _channel_of(j, piece, groups, pieces, STRIDED) * xs_c, mask=mask, other=0)
            v = v.to(acc_dtype)
            best = tl.where((v > best) | (v != v), v, best)
        lam = lambda_bits.to(tl.int64).to(tl.float64, bitcast=True).to(acc_dtype)
        total = tl.zeros([BLOCK // BLOCK_C, BLOCK_C], acc_dtype)
        weighted = tl.zeros([BLOCK // BLOCK_C, BLOCK_C], acc_dtype)
        for piece in range(0, pieces):
            v = tl.load(x_ptr + base + _channel_of(j, piece, groups, pieces, STRIDED) * xs_c, mask=mask, other=0)
            v = v.to(acc_dtype)
            w = tl.exp(lam * (v - best))
            total += w
            weighted += w * v
        z = tl.load(x_ptr + base + c * xs_c, mask=mask, other=0).to(acc_dtype)
        prob = tl.exp(lam * (z - best)) / total
        grad = dy.to(acc_dtype) * prob * (1 + lam * (z - weighted / total))
    else:
        chosen = tl.load(index_ptr + out, mask=mask, other=0).to(tl.int64) == own
        grad = tl.where(chosen, dy, 0)
    tl.store(grad_x_ptr + o * xs_o + c * xs_c + i * xs_i, grad.to(grad_x_ptr.dtype.element_ty), mask=mask)


def _view3(t: torch.Tensor, dim: int):
    """(outer, channels, inner) sizes and strides of a tensor whose dims before and after `dim` collapse
    (guaranteed by the caller's layout choice)."""
    def collapse(dims):
        size, stride = 1, 1
        for d in reversed(dims):
            if t.shape[d] == 1:
                continue
            if size == 1:
                stride = t.stride(d)
            size *= t.shape[d]
        return size, stride

    (outer, so), (inner, si) = collapse(range(dim)), collapse(range(dim + 1, t.dim()))
    return (outer, t.shape[dim], inner), (so, t.stride(dim), si)


def _tiles(outer, middle, inner, channel_fastest):
    """(grid, BLOCK_C) of a launch over the (outer, middle, inner) grid in tiles of _tile: columns along the
    unit-stride axis (middle with the channels fastest, else inner), BLOCK_C its size up to a power of two (at most
    BLOCK), so that a row's splits are made once per row and plane-sized rows fill the tile."""
    rows, cols = (outer * inner, middle) if channel_fastest else (outer * middle, inner)
    block_c = min(BLOCK, triton.next_power_of_2(cols))
    return (triton.cdiv(rows, BLOCK // block_c) * triton.cdiv(cols, block_c),), block_c


def _lambda_bits(temperature):
    """lambda = 1 / temperature as the int64 with its float64 bits (the kernel bitcasts it back and rounds it to
    the compute type, as the reference does)."""
    return struct.unpack("<q", struct.pack("<d", 1.0 / temperature if temperature else 1.0))[0]


def _guard(t):
    """The device of t current during a launch (tensors on cuda:1 while cuda:0 is current)."""
    import contextlib

    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def maxout_fwd(x, y, index, state, pieces, dim, strided, mode, temperature):
    """Launches the forward kernel into y (and index); tensors are laid out by cifarops.ops.maxout. state: the
    {seed, offset} int64 tensor of the draw (MODE_SAMPLE)."""
    if y.numel() == 0:
        return
    (outer, _, inner), x_strides = _view3(x, dim)
    _, y_strides = _view3(y, dim)
    groups = y.shape[dim]
    channel_fastest = x_strides[1] < x_strides[2]
    grid, block_c = _tiles(outer, groups, inner, channel_fastest)
    with _guard(x):
        _maxout_fwd_kernel[grid](
            x, y, index if index is not None else y, state if state is not None else y, _lambda_bits(temperature),
            outer, groups, inner, pieces, *x_strides, *y_strides,
            MODE=mode, STRIDED=strided, CHANNEL_FASTEST=channel_fastest, BLOCK=BLOCK, BLOCK_C=block_c,
            **LAUNCH_OPTIONS["_maxout_fwd_kernel"],
        )


def maxout_bwd(grad_y, index, x, grad_x, pieces, dim, strided, temperature):
    """Launches the backward kernel into grad_x: from the chosen pieces (index), or for the expectation
    (x and temperature)."""
    if grad_x.numel() == 0:
        return
    (outer, channels, inner), x_strides = _view3(grad_x, dim)
    _, y_strides = _view3(grad_y, dim)
    channel_fastest = x_strides[1] < x_strides[2]
    grid, block_c = _tiles(outer, channels, inner, channel_fastest)
    with _guard(grad_x):
        _maxout_bwd_kernel[grid](
            grad_y, index if index is not None else grad_y, x if x is not None else grad_y, grad_x,
            _lambda_bits(temperature), outer, channels, inner, pieces, *x_strides, *y_strides,
            EXPECTATION=index is None, STRIDED=strided, CHANNEL_FASTEST=channel_fastest, BLOCK=BLOCK,
            BLOCK_C=block_c,
        )
