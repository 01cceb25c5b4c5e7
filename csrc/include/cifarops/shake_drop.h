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

// Where the per-element coefficient c comes from.
enum class CoefSource : int {
  PerChannel = 0,  // coef[n * coef_stride_n + c * coef_stride_c]: batch, sample and channel levels
  PerElement = 1,  // coef[m]: an explicit tensor with h's shape, laid out like h
  Philox = 2,      // lo + (hi - lo) * legacy_philox_uniform(*seed, logical NCHW index, stream): pixel level
};

// Everything a kernel needs, as plain pointers and sizes. Tensors h, shortcut, out (and a PerElement
// coef) are dense in the same memory format: NCHW-contiguous or channels_last. gate and coef hold the
// OpMath type of `dtype` (float, or double for double tensors).
struct ShakeDropParams {
  const void* h = nullptr;
  const void* shortcut = nullptr;  // nullptr: no shortcut; else (N, shortcut_channels, spatial...)
  void* out = nullptr;
  const void* gate = nullptr;  // gate[n * gate_stride]
  int64_t gate_stride = 0;
  const void* coef = nullptr;
  int64_t coef_stride_n = 0, coef_stride_c = 0;
  const int64_t* seed = nullptr;  // Philox key, read where the kernel runs (a device pointer on CUDA)
  float lo = 0.f, hi = 0.f;       // Philox coefficient range
  uint32_t stream = 0;            // Philox stream: 0 for alpha, 1 for beta
  int64_t batch = 0, channels = 0, spatial = 0, shortcut_channels = 0;
  bool channels_last = false;
  DType dtype = DType::Float32;
  CoefSource coef_source = CoefSource::PerChannel;

  CIFAROPS_INLINE int64_t numel() const { return batch * channels * spatial; }
};

// Logical coordinates of an element: sample, channel, flattened spatial position.
struct Position {
  int64_t n, c, s;
};

CIFAROPS_INLINE Position locate(const ShakeDropParams& p, int64_t m) {
  if (p.channels_last) {
    const int64_t c = m % p.channels;
    const int64_t row = m / p.channels;
    return Position{row / p.spatial, c, row % p.spatial};
  }
  const int64_t s = m % p.spatial;
  const int64_t row = m / p.spatial;
  return Position{row / p.channels, row % p.channels, s};
}

// The element's position in the layout-independent NCHW order: the Philox counter.
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

template <typename acc_t>
CIFAROPS_INLINE acc_t shake_drop_coefficient(const ShakeDropParams& p, Position q, int64_t m) {
  switch (p.coef_source) {
    case CoefSource::PerChannel:
      return static_cast<const acc_t*>(p.coef)[q.n * p.coef_stride_n + q.c * p.coef_stride_c];
    case CoefSource::PerElement:
      return static_cast<const acc_t*>(p.coef)[m];
    default: {
      const float u = legacy_philox_uniform(static_cast<uint64_t>(*p.seed),
                                     static_cast<uint64_t>(logical_index(p, q)), p.stream);
      return static_cast<acc_t>(p.lo + (p.hi - p.lo) * u);
    }
  }
}

// out[m] for memory index m, with q = locate(p, m).
template <typename scalar_t>
CIFAROPS_INLINE void shake_drop_element(const ShakeDropParams& p, Position q, int64_t m) {
  using acc_t = typename OpMath<scalar_t>::type;
  const acc_t gate = static_cast<const acc_t*>(p.gate)[q.n * p.gate_stride];
  const acc_t scale = shake_drop_scale(gate, shake_drop_coefficient<acc_t>(p, q, m));
  acc_t y = scale * to_acc<acc_t>(static_cast<const scalar_t*>(p.h)[m]);
  if (p.shortcut != nullptr && q.c < p.shortcut_channels) {
    y += to_acc<acc_t>(static_cast<const scalar_t*>(p.shortcut)[shortcut_offset(p, q)]);
  }
  static_cast<scalar_t*>(p.out)[m] = from_acc<scalar_t>(y);
}

}  // namespace cifarops
