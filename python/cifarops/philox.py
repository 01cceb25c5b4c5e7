"""Philox4x32-10 in pure PyTorch: the oracle for the C++/CUDA (csrc/include/cifarops/philox.h) and Triton
(triton_kernels/philox.py) versions, and the noise source of the reference backend.

uint32 values are held in int64 tensors; products are split into 16-bit halves so that nothing overflows.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
MUL0, MUL1 = 0xD2511F53, 0xCD9E8D57
WEYL0, WEYL1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product a * b, for a constant a and a tensor b < 2^32."""
    p_lo = b * (a & 0xFFFF)  # < 2^48
    p_hi = b * (a >> 16)  # < 2^48; the product is p_hi * 2^16 + p_lo
    low = ((p_hi & 0xFFFF) << 16) + p_lo  # < 2^49
    return (p_hi >> 16) + (low >> 32), low & MASK32


def philox4x32_10(counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
    """Ten Philox rounds on four uint32 counter words (broadcastable int64 tensors) under a two-word key."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mulhilo(MUL0, c0)
        hi1, lo1 = _mulhilo(MUL1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + WEYL0) & MASK32
        k1 = (k1 + WEYL1) & MASK32
    return [c0, c1, c2, c3]


def philox_uniform(seed: torch.Tensor, index: torch.Tensor, stream: int) -> torch.Tensor:
    """float32 uniforms in [0, 1) for int64 element indices: word 0 of Philox(counter={index, stream, 0},
    key=seed), top 24 bits. `seed` is a one-element int64 tensor (read on its device, no host sync)."""
    seed = seed.reshape(()).to(index.device)
    key = (seed & MASK32, (seed >> 32) & MASK32)
    zero = torch.zeros((), dtype=torch.int64, device=index.device)
    counter = (index & MASK32, (index >> 32) & MASK32, zero + stream, zero)
    word = philox4x32_10(counter, key)[0]
    return (word >> 8).to(torch.float32) * (1.0 / 16777216.0)
