// ShakeDrop's shared math (SPEC.md): out = shortcut + (b + c - b*c) * h, where b is the gate and c is
// alpha in the forward pass, beta in the backward pass (which is the same formula with no shortcut).
// Stochastic depth (csrc/args/stochastic_depth.cpp) is the same pass with c = 0 and the gate scaled by s:
// out = shortcut + b * s * h.
//
// Torch-free on purpose: the CPU loop (csrc/cpu/shake_drop.cpp) and the CUDA kernel
// (csrc/cuda/shake_drop.cu) both include this header, so they compute the same thing by construction. The
// CUDA kernel's body and its launch geometry live here too (shake_drop_thread, shake_drop_launch), so that
// cpp_tests/kernel_grid_shake_drop.cpp runs every thread of the launch grid on the host.
#pragma once

#include <stdint.h>

#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/macros.h"
#include "cifarops/philox.h"
#include "cifarops/tensor_types.h"

namespace cifarops {

// Philox streams of one call: the gate, alpha and beta (python/cifarops/reference/ uses the same numbers).
constexpr uint32_t kShakeDropGateStream = 0, kShakeDropAlphaStream = 1, kShakeDropBetaStream = 2;
constexpr uint32_t kShakeDropStreams = 3;

// Where one noise value comes from. A drawn value is u(index, stream) with the index given by its level.
enum class Noise : int {
  Constant = 0,    // `value` (evaluation: gate 0, coefficient E[b + alpha - b*alpha])
  PerChannel = 1,  // data[n * stride_n + c * stride_c]: an explicit (1,), (N,) or (N, C) tensor (strides 0 to expand)
  PerElement = 2,  // data[m]: an explicit tensor with h's shape, laid out like h
  Drawn = 3,       // from Philox at `level`: the gate is Bernoulli(keep), a coefficient lo + (hi - lo) u
};
enum class Level : int { Batch = 0, Sample = 1, Channel = 2, Pixel = 3 };

struct NoiseSource {
  Noise kind = Noise::Constant;
  Level level = Level::Batch;
  const void* data = nullptr;  // explicit values in the compute type (float, or double for double tensors)
  int64_t stride_n = 0, stride_c = 0;
  double value = 0.0;
  float lo = 0.f, hi = 0.f;  // coefficient range; for the gate, hi is the keep probability 1 - p_drop
  // The gate only: what a kept gate is worth, a drawn or explicit gate's value times it. 1 for ShakeDrop;
  // stochastic depth's s = 1 / (1 - p), with a zero coefficient so that the scale is exactly b * s.
  double gain = 1.0;
  uint32_t stream = 0;
};

// Everything a kernel needs, as plain pointers and sizes. Tensors h, shortcut, out (and a PerElement
// coefficient) are dense in the same memory format: NCHW-contiguous or channels_last.
struct ShakeDropParams {
  const void* h = nullptr;
  const void* shortcut = nullptr;  // nullptr: no shortcut; else (N, shortcut_channels, spatial...)
  void* out = nullptr;
  NoiseSource gate, coef;          // coef: alpha forward, beta backward
  PhiloxState rng;                 // CPU: set on the host; CUDA: resolved in the kernel
  int64_t batch = 0, channels = 0, spatial = 0, shortcut_channels = 0;
  bool channels_last = false;

  CIFAROPS_INLINE int64_t numel() const { return batch * channels * spatial; }
  CIFAROPS_INLINE bool pixel_noise() const { return coef.kind == Noise::PerElement || (coef.kind == Noise::Drawn && coef.level == Level::Pixel); }
  // Whether the coefficient changes along the channels (so a channels_last row, which spans them, needs one
  // per element); batch- and sample-level coefficients do not.
  CIFAROPS_INLINE bool coef_varies_by_channel() const {
    return pixel_noise() || (coef.kind == Noise::PerChannel && coef.stride_c != 0) ||
           (coef.kind == Noise::Drawn && coef.level == Level::Channel);
  }
};

// Logical coordinates of an element: sample, channel, flattened spatial position.
struct Position {
  int64_t n, c, s;
};

template <typename index_t>
CIFAROPS_INLINE Position locate(const ShakeDropParams& p, index_t m) {
  if (p.channels_last) {
    const index_t channels = static_cast<index_t>(p.channels), spatial = static_cast<index_t>(p.spatial);
    const index_t row = m / channels;
    return Position{row / spatial, m - row * channels, row % spatial};
  }
  const index_t channels = static_cast<index_t>(p.channels), spatial = static_cast<index_t>(p.spatial);
  const index_t row = m / spatial;
  return Position{row / channels, row % channels, m - row * spatial};
}

// The element's position in the layout-independent NCHW order: the Philox index at pixel level.
CIFAROPS_INLINE int64_t logical_index(const ShakeDropParams& p, Position q) {
  return (q.n * p.channels + q.c) * p.spatial + q.s;
}

// Offset of (n, c, s) in the shortcut, which has fewer (or as many) channels than h.
CIFAROPS_INLINE int64_t shortcut_offset(const ShakeDropParams& p, Position q) {
  return p.channels_last ? (q.n * p.spatial + q.s) * p.shortcut_channels + q.c
                         : (q.n * p.shortcut_channels + q.c) * p.spatial + q.s;
}

// b + c - b*c, written as b + (1 - b) * c so that a gate of exactly 1 (or 0) gives exactly 1 (or c).
template <typename acc_t>
CIFAROPS_INLINE acc_t shake_drop_scale(acc_t gate, acc_t coef) {
  return gate + (acc_t(1) - gate) * coef;
}

// The Philox index of a per-batch, per-sample or per-channel value (pixel level uses logical_index).
CIFAROPS_INLINE uint64_t noise_index(const NoiseSource& src, const ShakeDropParams& p, int64_t n, int64_t c) {
  switch (src.level) {
    case Level::Batch: return 0;
    case Level::Sample: return static_cast<uint64_t>(n);
    default: return static_cast<uint64_t>(n * p.channels + c);
  }
}

template <typename acc_t>
CIFAROPS_INLINE acc_t shake_drop_gate(const ShakeDropParams& p, int64_t n) {
  const NoiseSource& g = p.gate;
  switch (g.kind) {
    case Noise::Constant: return static_cast<acc_t>(g.value);
    case Noise::Drawn:
      return philox_keep(philox_uniform(p.rng, noise_index(g, p, n, 0), g.stream), g.hi) ? static_cast<acc_t>(g.gain)
                                                                                         : acc_t(0);
    default: return static_cast<const acc_t*>(g.data)[n * g.stride_n] * static_cast<acc_t>(g.gain);
  }
}

// A drawn coefficient from its uniform.
template <typename acc_t>
CIFAROPS_INLINE acc_t coefficient_from_uniform(const NoiseSource& src, float u) {
  return static_cast<acc_t>(src.lo + (src.hi - src.lo) * u);
}

// The coefficient of element (q, memory index m); `u_pixel` is the pixel-level uniform when the level is Pixel.
template <typename acc_t>
CIFAROPS_INLINE acc_t shake_drop_coefficient(const ShakeDropParams& p, Position q, int64_t m) {
  const NoiseSource& src = p.coef;
  switch (src.kind) {
    case Noise::Constant: return static_cast<acc_t>(src.value);
    case Noise::PerChannel: return static_cast<const acc_t*>(src.data)[q.n * src.stride_n + q.c * src.stride_c];
    case Noise::PerElement: return static_cast<const acc_t*>(src.data)[m];
    default: {
      const uint64_t index = src.level == Level::Pixel ? static_cast<uint64_t>(logical_index(p, q))
                                                      : noise_index(src, p, q.n, q.c);
      return coefficient_from_uniform<acc_t>(src, philox_uniform(p.rng, index, src.stream));
    }
  }
}

// out[m] = shortcut + scale * h[m], for one element whose scale is known.
template <typename scalar_t, typename acc_t>
CIFAROPS_INLINE void shake_drop_store(const ShakeDropParams& p, Position q, int64_t m, acc_t scale) {
  acc_t y = scale * to_acc<acc_t>(static_cast<const scalar_t*>(p.h)[m]);
  if (p.shortcut != nullptr && q.c < p.shortcut_channels) {
    y += to_acc<acc_t>(static_cast<const scalar_t*>(p.shortcut)[shortcut_offset(p, q)]);
  }
  static_cast<scalar_t*>(p.out)[m] = from_acc<scalar_t>(y);
}

// ------------------------------------------------------------------------ the CUDA kernel, host-runnable
//
// How the launcher sizes the grid: 16-byte packets of kVec elements when every row (the H x W plane in NCHW,
// the C vector in channels_last) of h and of the shortcut holds whole packets and the pointers are aligned,
// else one element a thread; 32-bit indices below 2^31 elements (minus what the last grid stride may
// overshoot); at least one block, also for an empty tensor (it writes the RNG state).
struct ShakeDropLaunch {
  bool vectorize = false, small = false;
  unsigned blocks = 1;
};

template <typename scalar_t>
inline ShakeDropLaunch shake_drop_launch(const ShakeDropParams& p) {
  constexpr int kVec = packet_size<scalar_t>();
  const int64_t row = p.channels_last ? p.channels : p.spatial;
  const int64_t shortcut_row = p.channels_last ? p.shortcut_channels : p.spatial;
  ShakeDropLaunch launch;
  launch.vectorize = row % kVec == 0 && shortcut_row % kVec == 0 && aligned16(p.h) && aligned16(p.out) &&
                     (p.shortcut == nullptr || aligned16(p.shortcut));
  launch.blocks = elementwise_blocks(p.numel() / (launch.vectorize ? kVec : 1));
  launch.small = p.numel() < (int64_t(1) << 31) - kElementwiseThreads * 65536LL * kVec;
  return launch;
}

// Calls launcher.template operator()<kVec, index_t>() with the instantiation `launch` needs (the CUDA
// launcher launches that kernel; the host test runs its grid).
template <typename scalar_t, typename Launcher>
inline void shake_drop_dispatch(const ShakeDropLaunch& launch, Launcher&& launcher) {
  packet_dispatch<scalar_t>(launch.vectorize, launch.small, launcher);
}

// Thread `thread` of block `block` in a grid of `blocks` blocks: its grid-stride loop. It handles kVec
// consecutive elements of one row at a time (one packet load and store); all kVec share n, and the row's
// coordinates advance by one along s (NCHW) or c (channels_last), so locate()'s divisions happen once per
// packet, in index_t (32-bit when the tensor has fewer than 2^31 elements). The scale is computed once per
// packet unless it changes along the row (pixel noise; channel noise in channels_last); where the drawn
// indices along the row are consecutive (pixel level in NCHW, channel level in channels_last) one Philox call
// serves four elements. p.rng is resolved.
template <typename scalar_t, int kVec, typename index_t>
CIFAROPS_INLINE void shake_drop_thread(const ShakeDropParams& p, index_t block, index_t thread, index_t blocks) {
  using acc_t = typename OpMath<scalar_t>::type;
  const index_t packets = static_cast<index_t>(p.numel() / kVec);
  const index_t step = blocks * kElementwiseThreads;
  const auto* h = static_cast<const Packet<scalar_t, kVec>*>(p.h);
  auto* out = static_cast<Packet<scalar_t, kVec>*>(p.out);
  const bool per_element = p.channels_last ? p.coef_varies_by_channel() : p.pixel_noise();
  const bool drawn = p.coef.kind == Noise::Drawn;
  const bool quad_philox = drawn && (p.channels_last ? p.coef.level == Level::Channel : p.coef.level == Level::Pixel);
  for (index_t i = block * kElementwiseThreads + thread; i < packets; i += step) {
    const index_t m0 = i * kVec;
    const Position q0 = locate<index_t>(p, m0);
    const acc_t gate = shake_drop_gate<acc_t>(p, q0.n);
    const Packet<scalar_t, kVec> hv = h[i];
    Packet<scalar_t, kVec> xv;
    // The launcher's row check guarantees a packet is wholly inside or outside the shortcut.
    const bool has_shortcut = p.shortcut != nullptr && q0.c < p.shortcut_channels;
    if (has_shortcut) {
      xv = *reinterpret_cast<const Packet<scalar_t, kVec>*>(static_cast<const scalar_t*>(p.shortcut) +
                                                            shortcut_offset(p, q0));
    }
    // The packet shares n and, in NCHW, c.
    acc_t scale = per_element ? acc_t(0) : shake_drop_scale(gate, shake_drop_coefficient<acc_t>(p, q0, m0));
    Philox4 quad{};
    Packet<scalar_t, kVec> yv;
#if defined(__CUDACC__)
#pragma unroll
#endif
    for (int j = 0; j < kVec; ++j) {
      const Position q{q0.n, p.channels_last ? q0.c + j : q0.c, p.channels_last ? q0.s : q0.s + j};
      if (quad_philox) {
        // Consecutive Philox indices: one call per four elements.
        const uint64_t index = p.channels_last ? noise_index(p.coef, p, q.n, q.c) : static_cast<uint64_t>(logical_index(p, q));
        if (j == 0 || index % 4 == 0) quad = philox_quad(p.rng, index / 4, p.coef.stream);
        const float u = philox_bits_to_uniform(philox_word(quad, index % 4));  // no quad in local memory
        scale = shake_drop_scale(gate, coefficient_from_uniform<acc_t>(p.coef, u));
      } else if (per_element) {
        scale = shake_drop_scale(gate, shake_drop_coefficient<acc_t>(p, q, m0 + j));
      }
      acc_t y = scale * to_acc<acc_t>(hv.v[j]);
      if (has_shortcut) y += to_acc<acc_t>(xv.v[j]);
      yv.v[j] = from_acc<scalar_t>(y);
    }
    out[i] = yv;
  }
}

}  // namespace cifarops
