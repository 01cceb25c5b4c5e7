// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the one
// counter-based generator behind every random number in cifarops.
//
// The same function is written in triton_kernels/philox.py and python/cifarops/philox.py (pure PyTorch,
// the oracle). All three are tested against Random123's known-answer vectors, so every backend draws the
// same stream. A call's noise comes from an RNG state (seed, offset) taken from torch's generator of the
// device (see PhiloxState), and uniform u(index, stream) is
//
//   word (index % 4) of philox(counter = {lo(o), hi(o), lo(index / 4), hi(index / 4)}, key = {lo(seed), hi(seed)}),
//   o = offset / 4 + stream, top 24 bits as a float in [0, 1),
//
// which is the counter layout of curand's Philox (offset / 4 in the first two words, the subsequence in the
// last two): an op that reserves 4 * streams of the CUDA generator's offset never meets another op's counters.
// Four consecutive logical indices share one Philox call, so all four words are used.
#pragma once

#include <stdint.h>

#include "cifarops/macros.h"

namespace cifarops {

struct Philox4 {
  uint32_t v[4];
};

CIFAROPS_INLINE void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

CIFAROPS_INLINE Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kMul0, ctr.v[0], hi0, lo0);
    philox_mulhilo(kMul1, ctr.v[2], hi1, lo1);
    ctr = Philox4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return ctr;
}

// The RNG state of one call: the generator's seed and offset (CUDA: its Philox offset, reserved with
// philox_cuda_state(4 * streams); CPU: seed = the mt19937 generator's random64(), offset 0). Ops return it
// as an int64 tensor {seed, offset} for their backward and take it back for checkpoint replays.
struct PhiloxState {
  uint64_t seed = 0, offset = 0;
};

// 24 random bits as a float in [0, 1): exact in float32, so every backend gets the same value.
CIFAROPS_INLINE float philox_bits_to_uniform(uint32_t word) {
  return static_cast<float>(word >> 8) * (1.0f / 16777216.0f);
}

// The four uniforms of logical indices 4 * quad .. 4 * quad + 3 of `stream`, in one Philox call.
CIFAROPS_INLINE Philox4 philox_quad(PhiloxState s, uint64_t quad, uint32_t stream) {
  const uint64_t o = s.offset / 4 + stream;
  const Philox4 ctr{{static_cast<uint32_t>(o), static_cast<uint32_t>(o >> 32), static_cast<uint32_t>(quad),
                     static_cast<uint32_t>(quad >> 32)}};
  return philox4x32_10(ctr, static_cast<uint32_t>(s.seed), static_cast<uint32_t>(s.seed >> 32));
}

// The words of `count` consecutive quads from `first_quad` (words[4 q + w] = word w of quad first_quad + q): the
// numbers philox_quad gives, computed as loops over the quads, which the host compiler vectorises (the CPU
// kernels draw a tile of elements at a time this way). Host code: the GPU kernels call philox_quad per thread.
inline void philox_quads(PhiloxState s, uint64_t first_quad, uint32_t stream, int count, uint32_t* words) {
  constexpr int kMax = 256;
  uint32_t c0[kMax], c1[kMax], c2[kMax], c3[kMax];
  const uint64_t o = s.offset / 4 + stream;
  for (int q = 0; q < count; ++q) {
    c0[q] = static_cast<uint32_t>(o);
    c1[q] = static_cast<uint32_t>(o >> 32);
    c2[q] = static_cast<uint32_t>(first_quad + q);
    c3[q] = static_cast<uint32_t>((first_quad + q) >> 32);
  }
  uint32_t k0 = static_cast<uint32_t>(s.seed), k1 = static_cast<uint32_t>(s.seed >> 32);
  for (int round = 0; round < 10; ++round) {
    for (int q = 0; q < count; ++q) {
      const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0[q], p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2[q];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[q] ^ k0, n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[q] ^ k1;
      c1[q] = static_cast<uint32_t>(p1);
      c3[q] = static_cast<uint32_t>(p0);
      c0[q] = n0;
      c2[q] = n2;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  for (int q = 0; q < count; ++q) {
    words[4 * q] = c0[q];
    words[4 * q + 1] = c1[q];
    words[4 * q + 2] = c2[q];
    words[4 * q + 3] = c3[q];
  }
}

// Word `lane` (0..3) of a quad, by selects: indexing q.v with a value unknown at compile time makes the GPU
// compilers put the quad in local memory (scripts/kernel_report.py shows it as LDL / STL).
CIFAROPS_INLINE uint32_t philox_word(const Philox4& q, uint64_t lane) {
  const uint32_t low = (lane & 1) ? q.v[1] : q.v[0], high = (lane & 1) ? q.v[3] : q.v[2];
  return (lane & 2) ? high : low;
}

// u(index, stream): one uniform. Loops that need consecutive indices call philox_quad once per four.
CIFAROPS_INLINE float philox_uniform(PhiloxState s, uint64_t index, uint32_t stream) {
  return philox_bits_to_uniform(philox_word(philox_quad(s, index / 4, stream), index % 4));
}

// Bernoulli(1 - p_drop) from one uniform: exactly 1 for p_drop = 0 and 0 for p_drop = 1.
CIFAROPS_INLINE bool philox_keep(float u, float keep_probability) { return u < keep_probability; }

}  // namespace cifarops

