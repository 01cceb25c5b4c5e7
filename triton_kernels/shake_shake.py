"""Shake-Shake in Triton: forward y = shortcut + alpha * h1 + (1 - alpha) * h2, backward
(beta * dy, (1 - beta) * dy), each one pass (same math as csrc/include/cifarops/shake_shake.h).
The sample of memory element m is m // sample_size in NCHW and channels_last alike."""

import torch
import triton
import triton.language as tl

from cifarops.ops.common import dense_format

BLOCK = 1024


@triton.jit
def _shake_shake_fwd_kernel(h1_ptr, h2_ptr, x_ptr, y_ptr, alpha_ptr, alpha_stride, numel, sample_size,
                            HAS_SHORTCUT: tl.constexpr, BLOCK: tl.constexpr):
    m = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = m < numel
    alpha = tl.load(alpha_ptr + (m // sample_size) * alpha_stride, mask=mask, other=0)
    h1 = tl.load(h1_ptr + m, mask=mask, other=0).to(alpha.dtype)
    h2 = tl.load(h2_ptr + m, mask=mask, other=0).to(alpha.dtype)
    y = alpha * h1 + (1 - alpha) * h2
    if HAS_SHORTCUT:
        y += tl.load(x_ptr + m, mask=mask, other=0).to(alpha.dtype)
    tl.store(y_ptr + m, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _shake_shake_bwd_kernel(g_ptr, g1_ptr, g2_ptr, beta_ptr, beta_stride, numel, sample_size, BLOCK: tl.constexpr):
    m = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = m < numel
    beta = tl.load(beta_ptr + (m // sample_size) * beta_stride, mask=mask, other=0)
    g = tl.load(g_ptr + m, mask=mask, other=0).to(beta.dtype)
    tl.store(g1_ptr + m, (beta * g).to(g1_ptr.dtype.element_ty), mask=mask)
    tl.store(g2_ptr + m, ((1 - beta) * g).to(g2_ptr.dtype.element_ty), mask=mask)


def shake_shake_fwd(h1, h2, shortcut, alpha):
    """Launches the forward kernel; arguments were checked by the caller (cifarops.ops.shake_shake)."""
    fmt = dense_format(h1)
    h1, h2 = h1.contiguous(memory_format=fmt), h2.contiguous(memory_format=fmt)
    y = torch.empty_like(h1, memory_format=fmt)
    if h1.numel() == 0:
        return y
    if shortcut is not None:
        shortcut = shortcut.contiguous(memory_format=fmt)
    _shake_shake_fwd_kernel[(triton.cdiv(h1.numel(), BLOCK),)](
        h1, h2, shortcut if shortcut is not None else h1, y, alpha, alpha.stride(0), h1.numel(),
        h1.numel() // h1.shape[0], HAS_SHORTCUT=shortcut is not None, BLOCK=BLOCK,
    )
    return y


def shake_shake_bwd(grad_y, beta):
    fmt = dense_format(grad_y)
    grad_y = grad_y.contiguous(memory_format=fmt)
    g1, g2 = torch.empty_like(grad_y, memory_format=fmt), torch.empty_like(grad_y, memory_format=fmt)
    if grad_y.numel() == 0:
        return g1, g2
    _shake_shake_bwd_kernel[(triton.cdiv(grad_y.numel(), BLOCK),)](
        grad_y, g1, g2, beta, beta.stride(0), grad_y.numel(), grad_y.numel() // grad_y.shape[0], BLOCK=BLOCK,
    )
    return g1, g2
