"""Drop-Activation in Triton: one pass, the mask m = u(NCHW index, stream 0) < keep drawn per element (the same
Philox noise and math as csrc/include/cifarops/drop_activation.h). Forward: y = m ? relu(x) : x in training, the
leaky ReLU of slope 1 - keep in evaluation; backward (BACKWARD): grad_x from grad_y and the forward's output.
"""

import struct

import torch
import triton
import triton.language as tl

from cifarops.ops.common import dense_format
from cifarops.triton_kernels.philox import load_state, philox_uniform

BLOCK = 1024
# Mask sources: drawn from Philox, an explicit uint8 tensor, or none (evaluation).
DRAWN, EXPLICIT, NONE = 0, 1, 2
LAUNCH_OPTIONS = {"_drop_activation_kernel": {"num_warps": 8}}


@triton.jit
def _drop_activation_kernel(
    in_ptr, y_ptr, mask_ptr, out_ptr, state_ptr, keep, slope_bits, numel, channels, spatial,
    MASK: tl.constexpr, TRAINING: tl.constexpr, BACKWARD: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    m = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # 64-bit: correct past 2^31 elements
    valid = m < numel
    v = tl.load(in_ptr + m, mask=valid, other=0).to(ACC)
    slope = slope_bits.to(tl.int64).to(tl.float64, bitcast=True).to(ACC)  # float64 bits: exact for float64
    kept = tl.zeros([BLOCK], tl.int1)
    if TRAINING:
        if MASK == 0:
            if CHANNELS_LAST:
                c = m % channels
                row = m // channels
                logical = ((row // spatial) * channels + c) * spatial + row % spatial
            else:
                logical = m
            seed, offset = load_state(state_ptr)
            kept = philox_uniform(seed, offset, logical, 0) < keep
        elif MASK == 1:
            kept = tl.load(mask_ptr + m, mask=valid, other=0) != 0
    if BACKWARD:
        y = tl.load(y_ptr + m, mask=valid, other=0).to(ACC)
        if TRAINING:
            result = tl.where((y != 0) | (kept == 0), v, 0.0)
        else:
            result = tl.where(y > 0, v, slope * v)
    else:
        if TRAINING:
            result = tl.where(kept & (v < 0), 0.0, v)
        else:
            result = tl.where(v < 0, slope * v, v)
    tl.store(out_ptr + m, result.to(out_ptr.dtype.element_ty), mask=valid)


def drop_activation_apply(v, y, keep, training, mask, state, in_place=False):
    """Launches the kernel for the forward pass (y None: v is x) or the backward (v is grad_y); arguments were
    checked by the caller (cifarops.ops.drop_activation). in_place: the forward writes x (each element is read
    before it is written, at the same index; a non-dense x gets a dense output copied back) and returns it."""
    fmt = dense_format(v)
    target, v = v, v.contiguous(memory_format=fmt)
    out = v if in_place and v is target else torch.empty_like(v, memory_format=fmt)
    if v.numel() == 0:
        return target if in_place else out
    if y is not None:
        y = y.contiguous(memory_format=fmt)
    source = NONE if not training else EXPLICIT if mask is not None else DRAWN
    if mask is not None:
        mask = mask.contiguous(memory_format=fmt).view(torch.uint8)  # a bool is one byte, 0 or 1
    batch, channels = v.shape[0], v.shape[1]
    slope_bits = struct.unpack("<q", struct.pack("<d", 1.0 - float(keep)))[0]
    grid = (triton.cdiv(v.numel(), BLOCK),)
    run = lambda: _drop_activation_kernel[grid](  # noqa: E731
        v, y if y is not None else v, mask if mask is not None else v, out, state, float(keep), slope_bits,
        v.numel(), channels, v.numel() // (batch * channels),
        MASK=source, TRAINING=training, BACKWARD=y is not None, CHANNELS_LAST=fmt == torch.channels_last,
        ACC=tl.float64 if v.dtype == torch.float64 else tl.float32, BLOCK=BLOCK,
        **LAUNCH_OPTIONS["_drop_activation_kernel"],
    )
    if v.is_cuda:
        with torch.cuda.device(v.device):
            run()
    else:
        run()
    if in_place and out is not target:
        target.copy_(out)
    return target if in_place else out
