"""ShakeDrop in Triton: out = shortcut + (gate + (1 - gate) * coef) * h in one pass (math of SPEC.md, same
form and the same Philox noise as csrc/include/cifarops/shake_drop.h). The backward pass is the same kernel
with no shortcut and beta as the coefficient. Stochastic depth (triton_kernels/stochastic_depth.py) is the same
kernel with a zero coefficient and the gate worth s. Samples of PER_SAMPLE_MIN elements or more go on a grid of
(samples, blocks of a sample), where each program draws its batch- and sample-level noise once; smaller ones on
a flat grid, one draw per element.
"""

import struct

import torch
import triton
import triton.language as tl

from cifarops.ops.common import dense_format
from cifarops.triton_kernels.philox import load_state, philox_uniform

# Noise sources (as the C++ Noise enum) and levels.
CONSTANT, PER_CHANNEL, PER_ELEMENT, DRAWN = 0, 1, 2, 3
LEVEL = {"batch": 0, "sample": 1, "channel": 2, "pixel": 3}
BLOCK = 1024
# Launch options by kernel (cifarops.triton_kernels.variants compiles with the same): 4 elements a thread. With
# Triton's default of 4 warps (8 a thread) the channels_last float32 variants spilled on sm_80 (tests/test_build.py
# compiles every variant and fails on local memory).
LAUNCH_OPTIONS = {"_shake_drop_kernel": {"num_warps": 8}}
PER_SAMPLE_MIN = 4 * BLOCK  # the smallest sample (C x H x W elements) launched on the per-sample grid


@triton.jit
def _uniform(seed, offset, level: tl.constexpr, n, c, logical, channels, stream):
    """u(noise index, stream) of each element's noise at `level`. At batch level the whole call shares index 0:
    one Philox call for the block, broadcast, instead of one per element (per element, triton 3.6 spilled the
    two draws of the batch-level variants to local memory)."""
    if level == 0:
        return philox_uniform(seed, offset, tl.zeros([1], tl.int64), stream)
    elif level == 1:
        return philox_uniform(seed, offset, n, stream)
    elif level == 2:
        return philox_uniform(seed, offset, n * channels + c, stream)
    else:
        return philox_uniform(seed, offset, logical, stream)


@triton.jit
def _shake_drop_kernel(
    h_ptr, shortcut_ptr, out_ptr, state_ptr,
    gate_ptr, gate_stride, keep, gate_value_bits, gate_gain_bits,
    coef_ptr, coef_stride_n, coef_stride_c, lo, hi, coef_value_bits, coef_stream,
    numel, channels, spatial, shortcut_channels,
    HAS_SHORTCUT: tl.constexpr, CHANNELS_LAST: tl.constexpr, GATE_SOURCE: tl.constexpr, GATE_LEVEL: tl.constexpr,
    COEF_SOURCE: tl.constexpr, COEF_LEVEL: tl.constexpr, PER_SAMPLE: tl.constexpr, ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # 64-bit memory indices: correct past 2^31 elements.
    if PER_SAMPLE:
        # Grid (samples, blocks of a sample): every element of the program is in sample program_id(0), so its
        # batch- and sample-level draws are one Philox call for the program (n_draw), not one per element.
        sample = tl.program_id(0).to(tl.int64)
        sample_size = channels * spatial  # below 2^31 on this grid (at most 65535 blocks a sample)
        r = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = r < sample_size
        m = sample * sample_size + r
        if CHANNELS_LAST:
            c = r % channels
            s = r // channels
        else:
            s = r % spatial
            c = r // spatial
        n = tl.zeros([BLOCK], tl.int64) + sample
        n_draw = tl.zeros([1], tl.int64) + sample
    else:
        m = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = m < numel
        if CHANNELS_LAST:
            c = m % channels
            row = m // channels
            n = row // spatial
            s = row % spatial
        else:
            s = m % spatial
            row = m // spatial
            n = row // channels
            c = row % channels
        n_draw = n
    # NCHW: the logical (n, c, s) order is the memory order, and the shortcut's offset needs no split on the
    # per-sample grid (unused splits are compiled away).
    logical = m if not CHANNELS_LAST else (n * channels + c) * spatial + s
    seed, offset = load_state(state_ptr)
    # Host constants come as float64 bits (a Python float would arrive as float32): float64 tensors get them
    # exactly, the others rounded once, as the C++ kernels cast them.
    gate_gain = gate_gain_bits.to(tl.int64).to(tl.float64, bitcast=True).to(ACC)
    if GATE_SOURCE == 0:
        gate = tl.zeros([BLOCK], ACC) + gate_value_bits.to(tl.int64).to(tl.float64, bitcast=True).to(ACC)
    elif GATE_SOURCE == 1:
        gate = tl.load(gate_ptr + n * gate_stride, mask=mask, other=0).to(ACC) * gate_gain
    else:
        # A kept gate is worth gate_gain: 1 for ShakeDrop, stochastic depth's s (with a zero coefficient).
        u = _uniform(seed, offset, GATE_LEVEL, n_draw, c, logical, channels, 0)
        gate = tl.where(u < keep, gate_gain, 0.0) + tl.zeros([BLOCK], ACC)
    if COEF_SOURCE == 0:
        coef = tl.zeros([BLOCK], ACC) + coef_value_bits.to(tl.int64).to(tl.float64, bitcast=True).to(ACC)
    elif COEF_SOURCE == 1:
        coef = tl.load(coef_ptr + n * coef_stride_n + c * coef_stride_c, mask=mask, other=0).to(ACC)
    elif COEF_SOURCE == 2:
        coef = tl.load(coef_ptr + m, mask=mask, other=0).to(ACC)
    else:
        u = _uniform(seed, offset, COEF_LEVEL, n_draw, c, logical, channels, coef_stream)
        coef = (lo + (hi - lo) * u).to(ACC) + tl.zeros([BLOCK], ACC)
    scale = gate + (1 - gate) * coef
    y = scale * tl.load(h_ptr + m, mask=mask, other=0).to(ACC)
    if HAS_SHORTCUT:
        if CHANNELS_LAST:
            x_offset = (n * spatial + s) * shortcut_channels + c
            x_mask = mask & (c < shortcut_channels)
        elif PER_SAMPLE:
            x_offset = sample * shortcut_channels * spatial + r
            x_mask = mask & (r < shortcut_channels * spatial)
        else:
            x_offset = (n * shortcut_channels + c) * spatial + s
            x_mask = mask & (c < shortcut_channels)
        y += tl.load(shortcut_ptr + x_offset, mask=x_mask, other=0).to(ACC)
    tl.store(out_ptr + m, y.to(out_ptr.dtype.element_ty), mask=mask)


def _bits(value: float) -> int:
    """A float's float64 bits as an int64, the kernel's way in for a float64 constant."""
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def shake_drop_apply(h, shortcut, p_drop, alpha_range, coef_range, gate_level, level, training, gate, coef, state,
                     stream):
    """Launches the kernel; arguments were checked by the caller (cifarops.ops.shake_drop). `state` is the call's
    RNG state tensor; `stream` 1 (alpha, forward) or 2 (beta, backward)."""
    if not training:
        # Gate 0 makes the scale exactly the coefficient: E[b + alpha - b alpha].
        expected = (1.0 - p_drop) + p_drop * (alpha_range[0] + alpha_range[1]) / 2
        return launch(h, shortcut, state, gate_value=0.0, coef_value=expected)
    return launch(h, shortcut, state, keep=1.0 - p_drop, gate_level=gate_level, gate=gate, coef=coef,
                  coef_range=coef_range, level=level, coef_stream=stream)


def launch(h, shortcut, state, *, keep=1.0, gate_level="batch", gate=None, gate_value=None, gate_gain=1.0,
           coef=None, coef_value=None, coef_range=(0.0, 0.0), level="batch", coef_stream=1):
    """out = shortcut + (gate + (1 - gate) * coef) * h. The gate: the constant `gate_value`, else the explicit
    `gate` ((1,) or (N,)) times `gate_gain`, else drawn (stream 0, Bernoulli(keep) at `gate_level`, worth
    `gate_gain`). The coefficient: the constant `coef_value`, else the explicit `coef`, else drawn from `coef_range`
    at `level` (stream `coef_stream`)."""
    fmt = dense_format(h)
    h = h.contiguous(memory_format=fmt)
    out = torch.empty_like(h, memory_format=fmt)
    if h.numel() == 0:
        return out
    batch, channels = h.shape[0], h.shape[1]
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    if shortcut is not None:
        shortcut = shortcut.contiguous(memory_format=fmt)
    gate_source, gate_stride = DRAWN, 0
    if gate_value is not None:
        gate_source = CONSTANT
    elif gate is not None:
        gate = gate.to(acc)
        gate_source, gate_stride = PER_CHANNEL, 0 if gate.shape[0] == 1 else gate.stride(0)
    coef_source, coef_strides = DRAWN, (0, 0)
    if coef_value is not None:
        coef_source = CONSTANT
    elif coef is not None:
        coef = coef.to(acc)
        if tuple(coef.shape) == tuple(h.shape) and coef.dim() != 2:
            coef_source, coef = PER_ELEMENT, coef.contiguous(memory_format=fmt)
        elif coef.dim() == 1:
            coef_source, coef_strides = PER_CHANNEL, (0 if coef.shape[0] == 1 else coef.stride(0), 0)
        else:
            coef_source, coef_strides = PER_CHANNEL, (coef.stride(0), coef.stride(1))
    sample_size = h.numel() // batch
    # Samples of at least 4 blocks take the per-sample grid: a partial last block idles under a quarter of the lanes.
    per_sample = sample_size >= PER_SAMPLE_MIN and triton.cdiv(sample_size, BLOCK) <= 65535
    grid = (batch, triton.cdiv(sample_size, BLOCK)) if per_sample else (triton.cdiv(h.numel(), BLOCK),)
    run = lambda: _shake_drop_kernel[grid](  # noqa: E731
        h, shortcut if shortcut is not None else h, out, state,
        gate if gate is not None else h, gate_stride, float(keep), _bits(gate_value or 0.0), _bits(gate_gain),
        coef if coef is not None else h, *coef_strides, float(coef_range[0]), float(coef_range[1]),
        _bits(coef_value or 0.0), coef_stream,
        h.numel(), channels, h.numel() // (batch * channels), shortcut.shape[1] if shortcut is not None else 0,
        HAS_SHORTCUT=shortcut is not None, CHANNELS_LAST=fmt == torch.channels_last, GATE_SOURCE=gate_source,
        GATE_LEVEL=LEVEL[gate_level], COEF_SOURCE=coef_source, COEF_LEVEL=LEVEL[level], PER_SAMPLE=per_sample,
        ACC=tl.float64 if acc == torch.float64 else tl.float32, BLOCK=BLOCK, **LAUNCH_OPTIONS["_shake_drop_kernel"],
    )
    if h.is_cuda:
        with torch.cuda.device(h.device):  # the launch goes to h's device, also when another one is current
            run()
    else:
        run()
    return out
