"""Shake-Shake in Triton: forward y = shortcut + alpha * h1 + (1 - alpha) * h2, backward
(beta * dy, (1 - beta) * dy), each one pass (same math and noise as csrc/include/cifarops/shake_shake.h):
alpha = u(i, stream 0), beta = u(i, stream 1) of the call's RNG state, i = n (level "sample") or 0 ("batch").

Program (x, y) handles a block of sample y's elements (grid-striding over the samples past 65535), so the
coefficient is one scalar per program and no element index is divided. Sample n occupies memory elements
[n * sample_size, (n + 1) * sample_size) in NCHW and channels_last alike.
"""

import contextlib

import torch
import triton
import triton.language as tl

from cifarops import philox
from cifarops.ops.common import dense_format
from cifarops.triton_kernels.philox import load_state, philox_uniform

BLOCK = 1024
# Launch options by kernel (cifarops.triton_kernels.variants compiles with the same): 4 elements a thread. With
# Triton's default of 4 warps (8 a thread) the forward spilled on sm_80 (tests/test_build.py compiles every variant
# and fails on local memory).
LAUNCH_OPTIONS = {"_shake_shake_fwd_kernel": {"num_warps": 8}, "_shake_shake_bwd_kernel": {"num_warps": 8}}
MAX_GRID_Y = 65535
CONSTANT, EXPLICIT, DRAWN = 0, 1, 2


@triton.jit
def _coefficient(coef_ptr, coef_stride, n, seed, offset, KIND: tl.constexpr, PER_SAMPLE: tl.constexpr,
                 STREAM: tl.constexpr, IS_DOUBLE: tl.constexpr):
    """Sample n's coefficient as a one-element tensor (it broadcasts over the block)."""
    zero = tl.zeros([1], tl.int64)
    if KIND == 1:
        c = tl.load(coef_ptr + tl.cast(n, tl.int64) * coef_stride + zero)
    elif KIND == 2:
        if PER_SAMPLE:
            c = philox_uniform(seed, offset, zero + n, STREAM)
        else:
            c = philox_uniform(seed, offset, zero, STREAM)
    else:
        c = tl.zeros([1], tl.float32) + 0.5
    if IS_DOUBLE:
        c = c.to(tl.float64)
    else:
        c = c.to(tl.float32)
    return c


@triton.jit
def _shake_shake_fwd_kernel(h1_ptr, h2_ptr, x_ptr, y_ptr, coef_ptr, coef_stride, state_ptr, batch, sample_size,
                            KIND: tl.constexpr, PER_SAMPLE: tl.constexpr, IS_DOUBLE: tl.constexpr,
                            HAS_SHORTCUT: tl.constexpr, BLOCK: tl.constexpr):
    seed, offset = 0, 0
    if KIND == 2:
        seed, offset = load_state(state_ptr)
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < sample_size
    for n in range(tl.program_id(1), batch, tl.num_programs(1)):
        alpha = _coefficient(coef_ptr, coef_stride, n, seed, offset, KIND, PER_SAMPLE, 0, IS_DOUBLE)
        m = tl.cast(n, tl.int64) * sample_size + i
        h1 = tl.load(h1_ptr + m, mask=mask, other=0).to(alpha.dtype)
        h2 = tl.load(h2_ptr + m, mask=mask, other=0).to(alpha.dtype)
        y = alpha * h1 + (1 - alpha) * h2
        if HAS_SHORTCUT:
            y += tl.load(x_ptr + m, mask=mask, other=0).to(alpha.dtype)
        tl.store(y_ptr + m, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _shake_shake_bwd_kernel(g_ptr, g1_ptr, g2_ptr, coef_ptr, coef_stride, state_ptr, batch, sample_size,
                            KIND: tl.constexpr, PER_SAMPLE: tl.constexpr, STREAM: tl.constexpr,
                            IS_DOUBLE: tl.constexpr, BLOCK: tl.constexpr):
    seed, offset = 0, 0
    if KIND == 2:
        seed, offset = load_state(state_ptr)
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < sample_size
    for n in range(tl.program_id(1), batch, tl.num_programs(1)):
        beta = _coefficient(coef_ptr, coef_stride, n, seed, offset, KIND, PER_SAMPLE, STREAM, IS_DOUBLE)
        m = tl.cast(n, tl.int64) * sample_size + i
        g = tl.load(g_ptr + m, mask=mask, other=0).to(beta.dtype)
        tl.store(g1_ptr + m, (beta * g).to(g1_ptr.dtype.element_ty), mask=mask)
        tl.store(g2_ptr + m, ((1 - beta) * g).to(g2_ptr.dtype.element_ty), mask=mask)


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _explicit(coef: torch.Tensor, x: torch.Tensor):
    """An explicit (1,) or (N,) coefficient in the compute type, and its stride (0 for one value)."""
    coef = coef.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    return coef, 0 if coef.shape[0] == 1 else coef.stride(0)


def _grid(sample_size: int, batch: int):
    return (max(1, triton.cdiv(sample_size, BLOCK)), max(1, min(batch, MAX_GRID_Y)))


def shake_shake_fwd(h1, h2, shortcut, forward_mode, level, training, alpha, rng_state, drawing):
    """Launches the forward kernel; arguments were checked by the caller (cifarops.ops.shake_shake).
    Returns y and the RNG state used (zeros when the call draws nothing)."""
    fmt = dense_format(h1)
    h1, h2 = h1.contiguous(memory_format=fmt), h2.contiguous(memory_format=fmt)
    y = torch.empty_like(h1, memory_format=fmt)
    if not drawing:
        state = torch.zeros((2,), dtype=torch.int64, device=h1.device)
    elif rng_state is not None:
        state = rng_state.reshape(2).clone()  # an output, not an alias of the input
    else:
        state = philox.draw_state(h1.device, 2)
    if shortcut is not None:
        shortcut = shortcut.contiguous(memory_format=fmt)
    coef, stride, kind = h1, 0, CONSTANT
    if alpha is not None:
        (coef, stride), kind = _explicit(alpha, h1), EXPLICIT
    elif training and forward_mode == "shake":
        kind = DRAWN
    batch = h1.shape[0]
    sample_size = h1.numel() // batch if batch else 0
    if h1.numel() == 0:
        return y, state
    with _device_guard(h1):
        _shake_shake_fwd_kernel[_grid(sample_size, batch)](
            h1, h2, shortcut if shortcut is not None else h1, y, coef, stride, state, batch, sample_size,
            KIND=kind, PER_SAMPLE=level == "sample", IS_DOUBLE=h1.dtype == torch.float64,
            HAS_SHORTCUT=shortcut is not None, BLOCK=BLOCK, **LAUNCH_OPTIONS["_shake_shake_fwd_kernel"],
        )
    return y, state


def shake_shake_bwd(grad_y, rng_state, beta, backward_mode, level):
    fmt = dense_format(grad_y)
    grad_y = grad_y.contiguous(memory_format=fmt)
    g1, g2 = torch.empty_like(grad_y, memory_format=fmt), torch.empty_like(grad_y, memory_format=fmt)
    batch = grad_y.shape[0]
    sample_size = grad_y.numel() // batch if batch else 0
    if grad_y.numel() == 0:
        return g1, g2
    coef, stride, kind, stream = grad_y, 0, CONSTANT, 0
    if beta is not None:
        (coef, stride), kind = _explicit(beta, grad_y), EXPLICIT
    elif backward_mode in ("shake", "keep"):
        kind, stream = DRAWN, 1 if backward_mode == "shake" else 0
    with _device_guard(grad_y):
        _shake_shake_bwd_kernel[_grid(sample_size, batch)](
            grad_y, g1, g2, coef, stride, rng_state, batch, sample_size,
            KIND=kind, PER_SAMPLE=level == "sample", STREAM=stream, IS_DOUBLE=grad_y.dtype == torch.float64,
            BLOCK=BLOCK, **LAUNCH_OPTIONS["_shake_shake_bwd_kernel"],
        )
    return g1, g2
