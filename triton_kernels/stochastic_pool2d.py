"""Stochastic pooling in Triton (math of csrc/include/cifarops/stochastic_pool2d.h): forward over outputs (the
training draw or evaluation's weighting), backward over inputs, each input gathering from the windows that contain
it in (oh, ow) order, so no atomics. The window is k_h x k_w (constexpr: small hyper-parameters, unrolled), walked in
row-major order; positions outside the input weigh 0, which leaves every sum's bits as the header's clipped loops.

The draw: with a = max(x, 0) (NaN kept) in the compute type (float64 for float64, else float32), S = sum a, the
first positive a_i whose running sum exceeds u * S (or is +inf), else the last positive one; a region with a NaN
draws its first NaN; S = 0 draws nothing (offset 255, y = 0). u is the explicit float32 uniform laid out like y, or
philox_uniform(state, NCHW output index, stream 0). The forward is launched without fused multiply-adds, so every
sum and product rounds once, as rounding.h's rn_add / rn_mul do on every backend: the same running sums, the same
draws, bit for bit. float32 quotients use tl.div_rn (Triton's `/` is the approximate div.full.f32 on the GPU).

ROUND (CPU tensors, i.e. the interpreter, in bfloat16 only): values computed in float32 are rounded to bfloat16 to
nearest even by their bits, since the interpreter's own float32 -> bfloat16 cast truncates."""

import contextlib

import torch
import triton
import triton.language as tl

from cifarops.triton_kernels.philox import load_state, philox_uniform

BLOCK = 256
MODE_DRAWN, MODE_EXPLICIT, MODE_EXPECTATION = 0, 1, 2
NO_CHOICE = 255  # the offset of a region that drew nothing (k_h * k_w <= 255)
# No fused multiply-adds either way: the draw's sums decide the drawn element, and evaluation's sum of a^2 (also
# recomputed by the expectation backward) rounds each product, as every backend does (rounding.h). The backward runs
# one input a thread (8 warps for 256): with two, the float64 expectation backward of stride-1 3 x 3 windows
# (9 windows of 9 elements unrolled) spilled on sm_90 (tests/test_build.py fails on local memory).
LAUNCH_OPTIONS = {
    "_stochastic_pool2d_fwd_kernel": {"enable_fp_fusion": False},
    "_stochastic_pool2d_bwd_kernel": {"enable_fp_fusion": False, "num_warps": 8},
}


@triton.jit
def _split(t, channels, height, width, CHANNELS_LAST: tl.constexpr, SMALL: tl.constexpr):
    """(n, c, h, w) of memory index t (int64) of a dense NCHW or NHWC tensor of spatial size height x width; int32
    when SMALL (every index of the launch below 2^31: 32-bit divisions, a fraction of 64-bit ones' instructions on
    the GPU), else int64."""
    if SMALL:
        t = t.to(tl.int32)
    if CHANNELS_LAST:
        c = t % channels
        rest = t // channels
        w = rest % width
        rest = rest // width
        h = rest % height
        n = rest // height
    else:
        w = t % width
        rest = t // width
        h = rest % height
        rest = rest // height
        c = rest % channels
        n = rest // channels
    return n, c, h, w


@triton.jit
def _address(n, c, r, col, channels, height, width, CHANNELS_LAST: tl.constexpr):
    """Memory index of (n, c, r, col) in a dense NCHW or NHWC tensor (in n's integer type: products start from the
    tensors, so int64 lanes never multiply in 32 bits)."""
    if CHANNELS_LAST:
        return ((n * height + r) * width + col) * channels + c
    return ((n * channels + c) * height + r) * width + col


@triton.jit
def _activation(v):
    """a = max(v, 0) with NaN kept (torch's clamp_min; -0 gives +0)."""
    return tl.where((v > 0) | (v != v), v, 0.0).to(v.dtype)


@triton.jit
def _quotient(num, den, ACC: tl.constexpr):
    """num / den rounded once (IEEE): div_rn in float32, float64's `/` is already div.rn.f64."""
    if ACC == tl.float64:
        q = num / den
    else:
        q = tl.div_rn(num, den)
    return q


@triton.jit
def _to_storage(v, STORE: tl.constexpr, ROUND: tl.constexpr):
    """v in the storage type; ROUND: bfloat16 rounded to nearest even by its bits (the interpreter truncates)."""
    if ROUND:
        if STORE == tl.bfloat16:
            bits = v.to(tl.uint32, bitcast=True)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
            v = tl.where(v != v, v, rounded)
    return v.to(STORE)


@triton.jit
def _window_sums(x_ptr, n, c, h_start, w_start, channels, in_h, in_w, mask, ACC: tl.constexpr,
                 K_H: tl.constexpr, K_W: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """Evaluation's weighting of the windows starting at (h_start, w_start): (f, S) with S = sum a, f = sum a^2 / S,
    0 where S = 0, S where S is infinite; sums in the window's row-major order, each addition rounded."""
    s1 = tl.zeros(mask.shape, ACC)
    s2 = tl.zeros(mask.shape, ACC)
    for i in tl.static_range(K_H):
        r = h_start + i
        row_ok = mask & (r >= 0) & (r < in_h)
        for j in tl.static_range(K_W):
            col = w_start + j
            valid = row_ok & (col >= 0) & (col < in_w)
            v = tl.load(x_ptr + _address(n, c, r, col, channels, in_h, in_w, CHANNELS_LAST), mask=valid, other=0)
            a = _activation(v.to(ACC))
            s1 = s1 + a
            s2 = s2 + a * a
    f = tl.where(s1 == 0, 0.0, tl.where(s1 == float("inf"), s1, _quotient(s2, s1, ACC)))
    return f.to(ACC), s1


@triton.jit
def _stochastic_pool2d_fwd_kernel(
    x_ptr, y_ptr, offset_ptr, u_ptr, state_ptr, total, channels, in_h, in_w, out_h, out_w, stride_h, stride_w,
    pad_h, pad_w,
    K_H: tl.constexpr, K_W: tl.constexpr, MODE: tl.constexpr, CHANNELS_LAST: tl.constexpr, SMALL: tl.constexpr,
    ROUND: tl.constexpr, BLOCK: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # 64-bit: correct past 2^31 outputs
    mask = t < total
    n, c, oh, ow = _split(t, channels, out_h, out_w, CHANNELS_LAST, SMALL)
    STORE: tl.constexpr = x_ptr.dtype.element_ty
    ACC: tl.constexpr = tl.float64 if STORE == tl.float64 else tl.float32
    h_start = oh * stride_h - pad_h
    w_start = ow * stride_w - pad_w
    if MODE == 2:
        f, _ = _window_sums(x_ptr, n, c, h_start, w_start, channels, in_h, in_w, mask, ACC, K_H, K_W, CHANNELS_LAST)
        tl.store(y_ptr + t, _to_storage(f, STORE, ROUND), mask=mask)
    else:
        if MODE == 0:
            seed, offset = load_state(state_ptr)
            logical = ((n.to(tl.int64) * channels + c) * out_h + oh) * out_w + ow
            u = philox_uniform(seed, offset, logical, 0)
        else:
            u = tl.load(u_ptr + t, mask=mask, other=0)
        # Pass 1: S, the last positive element, the first NaN.
        s = tl.zeros([BLOCK], ACC)
        last = tl.full([BLOCK], 255, tl.int32)
        first_nan = tl.full([BLOCK], 255, tl.int32)
        for i in tl.static_range(K_H):
            r = h_start + i
            row_ok = mask & (r >= 0) & (r < in_h)
            for j in tl.static_range(K_W):
                col = w_start + j
                valid = row_ok & (col >= 0) & (col < in_w)
                v = tl.load(x_ptr + _address(n, c, r, col, channels, in_h, in_w, CHANNELS_LAST), mask=valid, other=0)
                a = _activation(v.to(ACC))
                s = s + a
                last = tl.where(a > 0, i * K_W + j, last)
                first_nan = tl.where((first_nan == 255) & (a != a), i * K_W + j, first_nan)
        target = u.to(ACC) * s
        # Pass 2: the first positive element whose running sum exceeds u * S or is +inf.
        running = tl.zeros([BLOCK], ACC)
        chosen = tl.full([BLOCK], 255, tl.int32)
        for i in tl.static_range(K_H):
            r = h_start + i
            row_ok = mask & (r >= 0) & (r < in_h)
            for j in tl.static_range(K_W):
                col = w_start + j
                valid = row_ok & (col >= 0) & (col < in_w)
                v = tl.load(x_ptr + _address(n, c, r, col, channels, in_h, in_w, CHANNELS_LAST), mask=valid, other=0)
                a = _activation(v.to(ACC))
                running = running + a
                hit = (chosen == 255) & (a > 0) & ((running > target) | (running == float("inf")))
                chosen = tl.where(hit, i * K_W + j, chosen)
        chosen = tl.where(chosen == 255, last, chosen)
        chosen = tl.where(first_nan != 255, first_nan, chosen)
        # y is the drawn element itself (a = x there), read again in the storage type: no rounding.
        drew = mask & (chosen != 255)
        r = h_start + chosen // K_W
        col = w_start + chosen % K_W
        y = tl.load(x_ptr + _address(n, c, r, col, channels, in_h, in_w, CHANNELS_LAST), mask=drew, other=0)
        tl.store(y_ptr + t, y, mask=mask)
        tl.store(offset_ptr + t, chosen.to(tl.uint8), mask=mask)


@triton.jit
def _stochastic_pool2d_bwd_kernel(
    grad_y_ptr, offset_ptr, x_ptr, grad_x_ptr, total, channels, in_h, in_w, out_h, out_w, stride_h, stride_w,
    pad_h, pad_w,
    K_H: tl.constexpr, K_W: tl.constexpr, SPAN_H: tl.constexpr, SPAN_W: tl.constexpr, EXPECTATION: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, SMALL: tl.constexpr, ROUND: tl.constexpr, BLOCK: tl.constexpr,
):
    """grad_x at input memory index t: the sum over the windows containing it, in (oh, ow) order, of grad_y[o]
    where the forward drew it (offset[o] is its place in window o), or for the expectation of
    grad_y[o] (2 a - f_o) / S_o where a > 0 and S_o is finite and nonzero (f_o, S_o recomputed from x).
    SPAN_H x SPAN_W bounds how many windows contain one input (ceil(k / stride), at most k)."""
    t = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # 64-bit: correct past 2^31 inputs
    mask = t < total
    n, c, h, w = _split(t, channels, in_h, in_w, CHANNELS_LAST, SMALL)
    STORE: tl.constexpr = grad_x_ptr.dtype.element_ty
    ACC: tl.constexpr = tl.float64 if STORE == tl.float64 else tl.float32
    # The outputs whose windows contain row h: [oh0, oh1); columns likewise.
    ph = h + pad_h
    oh0 = tl.where(ph < K_H, 0, (ph - K_H) // stride_h + 1)
    oh1 = tl.minimum(ph // stride_h + 1, out_h)
    pw = w + pad_w
    ow0 = tl.where(pw < K_W, 0, (pw - K_W) // stride_w + 1)
    ow1 = tl.minimum(pw // stride_w + 1, out_w)
    grad = tl.zeros([BLOCK], ACC)
    if EXPECTATION:
        a = _activation(tl.load(x_ptr + t, mask=mask, other=0).to(ACC))
        active = mask & (a > 0)  # else every window gives 0 (NaN included)
        two_a = 2.0 * a
        for di in tl.static_range(SPAN_H):
            oh = oh0 + di
            row_ok = active & (oh < oh1)
            for dj in tl.static_range(SPAN_W):
                ow = ow0 + dj
                valid = row_ok & (ow < ow1)
                f, s = _window_sums(x_ptr, n, c, oh * stride_h - pad_h, ow * stride_w - pad_w, channels, in_h, in_w,
                                    valid, ACC, K_H, K_W, CHANNELS_LAST)
                counts = valid & (s != 0) & (s != float("inf"))
                gy = tl.load(grad_y_ptr + _address(n, c, oh, ow, channels, out_h, out_w, CHANNELS_LAST), mask=counts,
                             other=0).to(ACC)
                term = _quotient(gy * (two_a - f), tl.where(counts, s, 1.0).to(ACC), ACC)
                grad = tl.where(counts, grad + term, grad)
    else:
        for di in tl.static_range(SPAN_H):
            oh = oh0 + di
            row_ok = mask & (oh < oh1)
            for dj in tl.static_range(SPAN_W):
                ow = ow0 + dj
                valid = row_ok & (ow < ow1)
                o = _address(n, c, oh, ow, channels, out_h, out_w, CHANNELS_LAST)
                place = (h - (oh * stride_h - pad_h)) * K_W + (w - (ow * stride_w - pad_w))
                drawn = tl.load(offset_ptr + o, mask=valid, other=255).to(tl.int32)
                hit = valid & (drawn == place)
                gy = tl.load(grad_y_ptr + o, mask=hit, other=0).to(ACC)
                grad = tl.where(hit, grad + gy, grad)
    tl.store(grad_x_ptr + t, _to_storage(grad, STORE, ROUND), mask=mask)


def _guard(t):
    """The tensor's device current around a launch (tensors on cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _round(t):
    """Whether float32 results round to bfloat16 by their bits (CPU tensors: the interpreter's cast truncates)."""
    return t.device.type == "cpu" and t.dtype == torch.bfloat16


def _small(*tensors):
    """Every index of the launch (and of the tensors it reads) below 2^31: 32-bit index math."""
    return all(t.numel() + BLOCK < 2**31 for t in tensors)


def _span(kernel, stride):
    """How many windows along one axis can contain one input: ceil(kernel / stride), at most kernel."""
    return min(kernel, -(-kernel // stride))


def stochastic_pool2d_fwd(x, y, offset, uniforms, state, kernel, stride, padding, channels_last: bool,
                          expectation: bool) -> None:
    """Launches the forward kernel into y (and offset, uint8, when not expectation). x (N, C, H, W) and y, offset,
    uniforms dense in one layout (NCHW, or all channels_last); uniforms: explicit float32 u laid out like y, or None
    (drawn from state, the {seed, offset} int64 (2,) tensor on x's device). Arguments were checked by the caller."""
    if y.numel() == 0:
        return
    mode = MODE_EXPECTATION if expectation else MODE_EXPLICIT if uniforms is not None else MODE_DRAWN
    (k_h, k_w), (s_h, s_w), (p_h, p_w) = kernel, stride, padding
    grid = (triton.cdiv(y.numel(), BLOCK),)
    with _guard(x):
        _stochastic_pool2d_fwd_kernel[grid](
            x, y, offset if offset is not None else y, uniforms if uniforms is not None else y,
            state if mode == MODE_DRAWN else y, y.numel(), x.shape[1], x.shape[2], x.shape[3], y.shape[2], y.shape[3],
            int(s_h), int(s_w), int(p_h), int(p_w),
            K_H=int(k_h), K_W=int(k_w), MODE=mode, CHANNELS_LAST=bool(channels_last), SMALL=_small(x, y),
            ROUND=_round(x), BLOCK=BLOCK,
            **LAUNCH_OPTIONS["_stochastic_pool2d_fwd_kernel"],
        )


def stochastic_pool2d_bwd(grad_y, offset, x, grad_x, kernel, stride, padding, channels_last: bool) -> None:
    """Launches the backward (gather) kernel into grad_x (input-shaped): from the drawn offsets (sample backward),
    or, with x instead, the expectation's gradient. Exactly one of offset and x is given; tensors dense in one
    layout."""
    if grad_x.numel() == 0:
        return
    (k_h, k_w), (s_h, s_w), (p_h, p_w) = kernel, stride, padding
    expectation = offset is None
    grid = (triton.cdiv(grad_x.numel(), BLOCK),)
    with _guard(grad_x):
        _stochastic_pool2d_bwd_kernel[grid](
            grad_y, offset if offset is not None else grad_y, x if x is not None else grad_y, grad_x, grad_x.numel(),
            grad_x.shape[1], grad_x.shape[2], grad_x.shape[3], grad_y.shape[2], grad_y.shape[3],
            int(s_h), int(s_w), int(p_h), int(p_w),
            K_H=int(k_h), K_W=int(k_w), SPAN_H=_span(int(k_h), int(s_h)), SPAN_W=_span(int(k_w), int(s_w)),
            EXPECTATION=expectation, CHANNELS_LAST=bool(channels_last), SMALL=_small(grad_x, grad_y),
            ROUND=_round(grad_x), BLOCK=BLOCK,
            **LAUNCH_OPTIONS["_stochastic_pool2d_bwd_kernel"],
        )
