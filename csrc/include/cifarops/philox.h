// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the one
// counter-based generator behind every per-element noise in cifarops.
//
// The same function is written in triton_kernels/philox.py and python/cifarops/philox.py (pure
// PyTorch, the oracle). All three are tested against Random123's known-answer vectors, so every
// backend draws the same stream: element `index` of noise `stream` under key `seed` is
// philox(counter = {index.lo, index.hi, stream, 0}, key = {seed.lo, seed.hi}).word0.
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

// A uniform float in [0, 1) with 24 random bits: exact in float32, so every backend gets the same value.
CIFAROPS_INLINE float philox_uniform(uint64_t seed, uint64_t index, uint32_t stream) {
  const Philox4 ctr{{static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), stream, 0u}};
  const Philox4 out = philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return static_cast<float>(out.v[0] >> 8) * (1.0f / 16777216.0f);
}

}  // namespace cifarops
