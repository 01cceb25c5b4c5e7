"""Philox4x32-10 for Triton kernels, the same stream as csrc/include/cifarops/philox.h and
python/cifarops/philox.py (all three are checked against Random123's known answers).

Written out here, rather than using tl.rand, so that every backend shares one documented generator.
"""

import triton
import triton.language as tl


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    for _ in tl.static_range(10):
        m0 = tl.full(c0.shape, 0xD2511F53, tl.uint32)
        m1 = tl.full(c2.shape, 0xCD9E8D57, tl.uint32)
        hi0 = tl.umulhi(m0, c0)
        lo0 = m0 * c0
        hi1 = tl.umulhi(m1, c2)
        lo1 = m1 * c2
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def philox_uniform(seed, index, stream):
    """float32 in [0, 1): top 24 bits of word 0 of Philox(counter={index, stream, 0}, key=seed).
    seed: int64 scalar; index: int64 tensor; stream: int."""
    c0 = (index & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((index >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c2 = tl.zeros(index.shape, tl.uint32) + stream
    c3 = tl.zeros(index.shape, tl.uint32)
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    w0, _, _, _ = philox4x32_10(c0, c1, c2, c3, k0, k1)
    return (w0 >> 8).to(tl.float32) * (1.0 / 16777216.0)
