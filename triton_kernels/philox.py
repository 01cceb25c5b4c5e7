"""Philox4x32-10 for Triton kernels, the same stream as csrc/include/cifarops/philox.h and
python/cifarops/philox.py (all three are checked against Random123's known answers).

Written out here, rather than using tl.rand, so that every backend shares one documented generator:
u(index, stream) under the RNG state {seed, offset} is word index % 4 of
Philox(counter = {offset / 4 + stream, index / 4}, key = seed), top 24 bits.
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
def load_state(state_ptr):
    """The call's RNG state {seed, offset}, read from the 2-element int64 tensor the op returns."""
    return tl.load(state_ptr), tl.load(state_ptr + 1)


@triton.jit
def philox_quad(seed, offset, quad, stream):
    """The four words of Philox for logical indices 4 * quad .. 4 * quad + 3 (quad: an int64 tensor)."""
    o = ((offset >> 2) & 0x3FFFFFFFFFFFFFFF) + stream  # uint64 offset / 4 (a logical shift), as in C++
    c0 = tl.zeros(quad.shape, tl.uint32) + (o & 0xFFFFFFFF).to(tl.uint32)
    c1 = tl.zeros(quad.shape, tl.uint32) + ((o >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c2 = (quad & 0xFFFFFFFF).to(tl.uint32)
    c3 = ((quad >> 32) & 0xFFFFFFFF).to(tl.uint32)
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    return philox4x32_10(c0, c1, c2, c3, k0, k1)


@triton.jit
def bits_to_uniform(word):
    return (word >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def philox_uniform(seed, offset, index, stream):
    """float32 u(index, stream) in [0, 1). seed, offset: int64 scalars; index: int64 tensor; stream: int."""
    w0, w1, w2, w3 = philox_quad(seed, offset, index >> 2, stream)
    lane = index & 3
    word = tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3)))
    return bits_to_uniform(word)

