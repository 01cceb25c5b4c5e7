"""ShakeDrop in Triton: out = shortcut + (gate + (1 - gate) * coef) * h in one pass (math of SPEC.md,
same form as csrc/include/cifarops/shake_drop.h). The backward pass is the same kernel with no shortcut
and beta as the coefficient.
"""

import torch
import triton
import triton.language as tl

from cifarops.ops.common import dense_format
from cifarops.triton_kernels.philox import legacy_philox_uniform

COEF_PER_CHANNEL, COEF_PER_ELEMENT, COEF_PHILOX = 0, 1, 2
BLOCK = 1024


@triton.jit
def _shake_drop_kernel(
    h_ptr, shortcut_ptr, out_ptr, gate_ptr, gate_stride, coef_ptr, coef_stride_n, coef_stride_c, seed_ptr,
    lo, hi, stream, numel, channels, spatial, shortcut_channels,
    HAS_SHORTCUT: tl.constexpr, CHANNELS_LAST: tl.constexpr, COEF_SOURCE: tl.constexpr, BLOCK: tl.constexpr,
):
    # 64-bit memory indices: correct past 2^31 elements.
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
    gate = tl.load(gate_ptr + n * gate_stride, mask=mask, other=0)
    if COEF_SOURCE == 0:
        coef = tl.load(coef_ptr + n * coef_stride_n + c * coef_stride_c, mask=mask, other=0)
    elif COEF_SOURCE == 1:
        coef = tl.load(coef_ptr + m, mask=mask, other=0)
    else:
        u = legacy_philox_uniform(tl.load(seed_ptr), (n * channels + c) * spatial + s, stream)
        coef = (lo + (hi - lo) * u).to(gate.dtype)
    scale = gate + (1 - gate) * coef
    y = scale * tl.load(h_ptr + m, mask=mask, other=0).to(gate.dtype)
    if HAS_SHORTCUT:
        if CHANNELS_LAST:
            offset = (n * spatial + s) * shortcut_channels + c
        else:
            offset = (n * shortcut_channels + c) * spatial + s
        y += tl.load(shortcut_ptr + offset, mask=mask & (c < shortcut_channels), other=0).to(gate.dtype)
    tl.store(out_ptr + m, y.to(out_ptr.dtype.element_ty), mask=mask)


def shake_drop_apply(h, shortcut, gate, coef, seed, coef_range, stream):
    """Launches the kernel; arguments were checked by the caller (cifarops.ops.shake_drop)."""
    fmt = dense_format(h)
    h = h.contiguous(memory_format=fmt)
    out = torch.empty_like(h, memory_format=fmt)
    if h.numel() == 0:
        return out
    batch, channels = h.shape[0], h.shape[1]
    if shortcut is not None:
        shortcut = shortcut.contiguous(memory_format=fmt)
    if coef is None:
        source, coef_strides = COEF_PHILOX, (0, 0)
    elif coef.dim() == 2:
        source, coef_strides = COEF_PER_CHANNEL, (coef.stride(0), coef.stride(1))
    else:
        source, coef_strides, coef = COEF_PER_ELEMENT, (0, 0), coef.contiguous(memory_format=fmt)
    grid = (triton.cdiv(h.numel(), BLOCK),)
    _shake_drop_kernel[grid](
        h, shortcut if shortcut is not None else h, out, gate, gate.stride(0),
        coef if coef is not None else gate, *coef_strides,
        seed if seed is not None else gate,
        float(coef_range[0]), float(coef_range[1]), stream,
        h.numel(), channels, h.numel() // (batch * channels),
        shortcut.shape[1] if shortcut is not None else 0,
        HAS_SHORTCUT=shortcut is not None, CHANNELS_LAST=fmt == torch.channels_last,
        COEF_SOURCE=source, BLOCK=BLOCK,
    )
    return out
