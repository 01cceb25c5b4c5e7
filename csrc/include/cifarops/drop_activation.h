// Drop-Activation's shared math (SPEC.md; Liang, Khoo & Yang, arXiv 1811.05850): each ReLU kept with
// probability `keep`, the identity otherwise, one draw per element:
//   training    y = m ? relu(x) : x,               dx = dy where y != 0 or m = 0, else 0
//   evaluation  y = x < 0 ? (1 - keep) x : x,       dx = dy where y > 0, else (1 - keep) dy
// The backward reads the output, never x (y > 0 means x > 0, y < 0 means m = 0), and regenerates m from the
// forward's RNG state: m = u(logical index, stream 0) < keep. NaN propagates as torch's relu and leaky_relu
// propagate it (relu(NaN) = NaN, and its gradient passes).
//
// Torch-free on purpose: the CPU loop (csrc/cpu/drop_activation.cpp) and the CUDA kernel
// (csrc/cuda/drop_activation.cu) include this header, and cpp_tests/kernel_grid_drop_activation.cpp runs the
// kernel's whole grid on the host.
#pragma once

#include <stdint.h>

#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/macros.h"
#include "cifarops/philox.h"
#include "cifarops/tensor_types.h"

namespace cifarops {

constexpr uint32_t kDropActivationStreams = 1;  // the mask's stream, 0

// Dense NCHW or channels_last tensors of one shape; the kernel writes `out`.
struct DropActivationParams {
  const void* in = nullptr;            // forward: x; backward: grad_y
  const void* y = nullptr;             // backward: the forward's output; nullptr in forward
  const uint8_t* mask = nullptr;       // an explicit bool mask laid out like `in` (1 keeps the ReLU), or drawn
  void* out = nullptr;
  PhiloxState rng;                     // CPU: set on the host; CUDA: resolved in the kernel
  int64_t batch = 0, channels = 0, spatial = 0;
  bool channels_last = false, training = true;
  float keep = 0.95f;                  // the probability of keeping the ReLU (compared with float32 uniforms)
  double slope = 0.05;                 // evaluation's negative slope, 1 - keep, in the compute type

  CIFAROPS_INLINE int64_t numel() const { return batch * channels * spatial; }
  CIFAROPS_INLINE bool backward() const { return y != nullptr; }
};

// The NCHW index of memory index m (the Philox index: the same mask whatever the layout).
template <typename index_t>
CIFAROPS_INLINE uint64_t drop_activation_logical(const DropActivationParams& p, index_t m) {
  if (!p.channels_last) return static_cast<uint64_t>(m);
  const index_t channels = static_cast<index_t>(p.channels), spatial = static_cast<index_t>(p.spatial);
  const index_t row = m / channels, c = m - row * channels;
  const index_t n = row / spatial, s = row - n * spatial;
  return (static_cast<uint64_t>(n) * p.channels + c) * p.spatial + s;
}

// One element: `v` is x (forward) or grad_y (backward), `y` the forward's output, `kept` the mask bit.
template <typename acc_t>
CIFAROPS_INLINE acc_t drop_activation_value(const DropActivationParams& p, acc_t v, acc_t y, bool kept) {
  const acc_t slope = static_cast<acc_t>(p.slope);
  if (!p.backward()) {
    if (p.training) return kept && v < acc_t(0) ? acc_t(0) : v;
    return v < acc_t(0) ? slope * v : v;
  }
  if (p.training) return y != acc_t(0) || !kept ? v : acc_t(0);
  return y > acc_t(0) ? v : slope * v;
}

// ------------------------------------------------------------------------ the CUDA kernel, host-runnable
//
// 16-byte packets when the element count holds whole ones and the pointers are aligned, else one element a
// thread; 32-bit indices below 2^31 elements (minus what the last grid stride may overshoot).
struct DropActivationLaunch {
  bool vectorize = false, small = false;
  unsigned blocks = 1;
};

template <typename scalar_t>
inline DropActivationLaunch drop_activation_launch(const DropActivationParams& p) {
  constexpr int kVec = packet_size<scalar_t>();
  DropActivationLaunch launch;
  launch.vectorize = p.numel() % kVec == 0 && aligned16(p.in) && aligned16(p.out) && (p.y == nullptr || aligned16(p.y));
  launch.blocks = elementwise_blocks(p.numel() / (launch.vectorize ? kVec : 1));
  launch.small = p.numel() < (int64_t(1) << 31) - kElementwiseThreads * 65536LL * kVec;
  return launch;
}

// Thread `thread` of block `block` of `blocks`: a grid-stride loop over packets of kVec consecutive elements.
// The mask is drawn only in training without an explicit mask; in NCHW the packet's Philox indices are
// consecutive, so one Philox call serves four elements. p.rng is resolved.
template <typename scalar_t, int kVec, typename index_t>
CIFAROPS_INLINE void drop_activation_thread(const DropActivationParams& p, index_t block, index_t thread,
                                            index_t blocks) {
  using acc_t = typename OpMath<scalar_t>::type;
  const index_t packets = static_cast<index_t>(p.numel() / kVec);
  const index_t step = blocks * kElementwiseThreads;
  const auto* in = static_cast<const Packet<scalar_t, kVec>*>(p.in);
  const auto* ys = static_cast<const Packet<scalar_t, kVec>*>(p.y);
  auto* out = static_cast<Packet<scalar_t, kVec>*>(p.out);
  const bool draws = p.training && p.mask == nullptr;
  for (index_t i = block * kElementwiseThreads + thread; i < packets; i += step) {
    const index_t m0 = i * kVec;
    const Packet<scalar_t, kVec> v = in[i];
    Packet<scalar_t, kVec> yv{};
    if (ys != nullptr) yv = ys[i];
    Packet<scalar_t, kVec> result;
    Philox4 quad{};
    // channels_last: the packet's first element located by two divisions, the others by stepping its channel
    // (wrapping to the next pixel), not two divisions an element. NCHW: the index is m itself.
    index_t n = 0, c = 0, s = 0;
    if (draws && p.channels_last) {
      const index_t channels = static_cast<index_t>(p.channels), spatial = static_cast<index_t>(p.spatial);
      const index_t row = m0 / channels;
      c = m0 - row * channels;
      n = row / spatial;
      s = row - n * spatial;
    }
#if defined(__CUDACC__)
#pragma unroll
#endif
    for (int j = 0; j < kVec; ++j) {
      bool kept = false;
      if (p.mask != nullptr) {
        kept = p.training && p.mask[m0 + j] != 0;
      } else if (draws && p.channels_last) {
        const uint64_t index = (static_cast<uint64_t>(n) * p.channels + c) * p.spatial + s;
        quad = philox_quad(p.rng, index / 4, 0);
        kept = philox_keep(philox_bits_to_uniform(philox_word(quad, index % 4)), p.keep);
        if (++c == static_cast<index_t>(p.channels)) {
          c = 0;
          if (++s == static_cast<index_t>(p.spatial)) s = 0, ++n;
        }
      } else if (draws) {
        const uint64_t index = static_cast<uint64_t>(m0 + j);
        if (j == 0 || index % 4 == 0) quad = philox_quad(p.rng, index / 4, 0);
        kept = philox_keep(philox_bits_to_uniform(philox_word(quad, index % 4)), p.keep);
      }
      const acc_t y = ys != nullptr ? to_acc<acc_t>(yv.v[j]) : acc_t(0);
      result.v[j] = from_acc<scalar_t>(drop_activation_value<acc_t>(p, to_acc<acc_t>(v.v[j]), y, kept));
    }
    out[i] = result;
  }
}

template <typename scalar_t, typename Launcher>
inline void drop_activation_dispatch(const DropActivationLaunch& launch, Launcher&& launcher) {
  packet_dispatch<scalar_t>(launch.vectorize, launch.small, launcher);
}

}  // namespace cifarops
