// Building blocks of the memory-bound CUDA kernels: 16-byte packets, grid-stride launch sizes and the choice of
// instantiation. Torch-free and host-compilable: the launchers and cpp_tests/kernel_grid_*.cpp share them.
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

// Calls launcher.template operator()<kVec, index_t>() for a kernel over packets of kVec elements (or one
// element a thread) with 32-bit (`small`) or 64-bit indices: the CUDA launcher launches that instantiation,
// the host test runs its grid. The 32-bit index is unsigned, as in every other kernel: its divisions by the
// channel and plane sizes are the cheaper unsigned ones, and no index is ever negative.
template <typename scalar_t, typename Launcher>
inline void packet_dispatch(bool vectorize, bool small, Launcher&& launcher) {
  constexpr int kVec = packet_size<scalar_t>();
  if (vectorize && small) {
    launcher.template operator()<kVec, uint32_t>();
  } else if (vectorize) {
    launcher.template operator()<kVec, int64_t>();
  } else if (small) {
    launcher.template operator()<1, uint32_t>();
  } else {
    launcher.template operator()<1, int64_t>();
  }
}

// Calls launcher.template operator()<index_t, kChannelFastest>() for a thread-per-output kernel: 32-bit
// (`small`) or 64-bit indices, channels fastest in memory (channels_last) or not. Maxout's backward and FMP use it.
template <typename Launcher>
inline void index_layout_dispatch(bool small, bool channel_fastest, Launcher&& launcher) {
  if (small && channel_fastest) {
    launcher.template operator()<uint32_t, true>();
  } else if (small) {
    launcher.template operator()<uint32_t, false>();
  } else if (channel_fastest) {
    launcher.template operator()<int64_t, true>();
  } else {
    launcher.template operator()<int64_t, false>();
  }
}

}  // namespace cifarops
