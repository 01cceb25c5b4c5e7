// Building blocks of the memory-bound CUDA kernels: 16-byte packets and grid-stride launch sizes.
#pragma once

#include <stdint.h>

namespace cifarops {

constexpr int kElementwiseThreads = 256;

// kVec elements loaded or stored as one aligned vector access.
template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Packet {
  scalar_t v[kVec];
};

// Elements per 16-byte packet.
template <typename scalar_t>
constexpr int packet_size() {
  return 16 / static_cast<int>(sizeof(scalar_t));
}

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Blocks for `items` work items, capped: kernels grid-stride over the rest.
inline unsigned elementwise_blocks(int64_t items) {
  const int64_t blocks = (items + kElementwiseThreads - 1) / kElementwiseThreads;
  return static_cast<unsigned>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

}  // namespace cifarops
