"""Philox4x32-10 in pure PyTorch: the oracle for the C++/CUDA (csrc/include/cifarops/philox.h) and Triton
(triton_kernels/philox.py) versions, and the noise source of the reference backend.

A call's noise comes from an RNG state ``(seed, offset)`` taken from torch's generator of the device by
:func:`draw_state`, exactly as the compiled kernels take it: on CUDA the generator's Philox seed and offset
(the offset advanced by 4 per stream, as ``philox_cuda_state`` does); on the CPU one ``random64()`` of the
mt19937 generator as the seed, offset 0. Uniform u(index, stream) is word ``index % 4`` of
Philox(counter = {offset / 4 + stream, index / 4}, key = seed), top 24 bits: four consecutive indices share
one call (curand's counter layout: 64-bit offset words first, then the 64-bit subsequence).

uint32 values are held in int64 tensors; products are split into 16-bit halves so that nothing overflows.
"""

from __future__ import annotations

import torch

from cifarops import _extension

MASK32 = 0xFFFFFFFF
MUL0, MUL1 = 0xD2511F53, 0xCD9E8D57
WEYL0, WEYL1 = 0x9E3779B9, 0xBB67AE85
OFFSET_QUARTER_MASK = (1 << 62) - 1  # the bits of (a uint64) >> 2


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


def _words(state: torch.Tensor, index: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    state = state.reshape(2).to(index.device)
    seed, offset = state[0], state[1]
    return (seed & MASK32, (seed >> 32) & MASK32), offset


def philox_uniform(state: torch.Tensor, index: torch.Tensor, stream: int) -> torch.Tensor:
    """float32 uniforms in [0, 1) for int64 logical indices under an RNG state {seed, offset} (a 2-element
    int64 tensor, read on its device: no host sync)."""
    key, offset = _words(state, index)
    # offset / 4 of the uint64 offset (int64 here): a logical shift, so offsets from 2^63 on (negative as int64)
    # give C++'s counters too. o stays below 2^62 + streams: no overflow.
    o = ((offset >> 2) & OFFSET_QUARTER_MASK) + stream
    quad = index >> 2
    counter = (o & MASK32, (o >> 32) & MASK32, quad & MASK32, (quad >> 32) & MASK32)
    w0, w1, w2, w3 = philox4x32_10(counter, key)
    lane = index & 3
    word = torch.where(lane == 0, w0, torch.where(lane == 1, w1, torch.where(lane == 2, w2, w3)))
    return (word >> 8).to(torch.float32) * (1.0 / 16777216.0)


def philox_uniform_range(state: torch.Tensor, numel: int, stream: int, device) -> torch.Tensor:
    """philox_uniform of the logical indices 0 .. numel - 1, one Philox call per four of them (all four words
    used, as the kernels use them): a quarter of the work of philox_uniform on an arange."""
    quad = torch.arange((numel + 3) // 4, dtype=torch.int64, device=device)
    key, offset = _words(state, quad)
    o = ((offset >> 2) & OFFSET_QUARTER_MASK) + stream
    words = philox4x32_10((o & MASK32, (o >> 32) & MASK32, quad & MASK32, (quad >> 32) & MASK32), key)
    word = torch.stack(torch.broadcast_tensors(*words), dim=1).reshape(-1)[:numel]
    return (word >> 8).to(torch.float32) * (1.0 / 16777216.0)


def draw_state(device: torch.device, streams: int) -> torch.Tensor:
    """The RNG state {seed, offset} (int64, on ``device``) of one call that uses ``streams`` streams, taken from
    torch's default generator of ``device`` and advancing it exactly as the compiled kernels do.

    With the compiled extension the state is reserved in C++ under the generator's mutex (two threads never get
    the same counters), and on CUDA unpacked on the device by a one-thread kernel: no host sync, and CUDA-graph
    safe (csrc/args/rng.h). Nothing here reads or sets the generator's offset from Python."""
    device = torch.device(device)
    if torch.compiler.is_compiling():
        # Traced code cannot read the generator's offset; a key drawn by the graph's own RNG gives the same
        # distributions (the compiled ops themselves still take the generator's state in the kernel).
        return _key_from_torch_rng(device)
    if device.type == "meta":  # shape inference (GPipe's stages, fake tensors): nothing to draw
        return torch.zeros(2, dtype=torch.int64, device=device)
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"cifarops: no generator for {device} tensors")
    draw = _extension.entry("draw_rng_state")  # None without the extension (or an old build without it)
    if draw is not None and (device.type == "cpu" or _extension.BUILD_INFO.get("cuda")):
        return draw(device, streams)
    if device.type == "cuda":
        # No CUDA kernels compiled in (the Triton backend alone): a key from torch's own RNG on the device, again
        # without a host sync; the same distributions, though not the stream the CUDA ops would draw.
        return _key_from_torch_rng(device)
    # One random64() of the CPU generator (what the C++ draw takes): random_ over the full int64 range reads it.
    seed = torch.empty((1,), dtype=torch.int64).random_(-(2**63), None)
    return torch.cat([seed, torch.zeros((1,), dtype=torch.int64)])


def _key_from_torch_rng(device: torch.device) -> torch.Tensor:
    """{a key drawn by torch's RNG on device, offset 0}: one kernel, no host data."""
    seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=device)
    return torch.cat([seed, torch.zeros((1,), dtype=torch.int64, device=device)])
