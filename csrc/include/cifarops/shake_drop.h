// ShakeDrop's shared math (SPEC.md): out = shortcut + (b + c - b*c) * h, where b is the gate and c is
// alpha in the forward pass, beta in the backward pass (which is the same formula with no shortcut).
//
// Torch-free on purpose: the CPU loop (csrc/cpu/shake_drop.cpp) and the CUDA kernel
// (csrc/cuda/shake_drop.cu) both include this header, so they compute the same thing by construction.
#pragma once

#include <stdint.h>

#include "cifarops/macros.h"
#include "cifarops/philox.h"
#include "cifarops/tensor_types.h"

namespace cifarops {

// Philox streams of one call: the gate, alpha and beta (python/cifarops/reference.py uses the same numbers).
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
      return philox_keep(philox_uniform(p.rng, noise_index(g, p, n, 0), g.stream), g.hi) ? acc_t(1) : acc_t(0);
    default: return static_cast<const acc_t*>(g.data)[n * g.stride_n];
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

}  // namespace cifarops
