// Shake-Shake's shared math (SPEC.md): forward y = shortcut + alpha * h1 + (1 - alpha) * h2, backward
// grad_h1 = beta * grad_y, grad_h2 = (1 - beta) * grad_y, with one alpha and one beta per sample (level
// "sample") or per batch (level "batch").
//
// The coefficients are drawn inside the kernels (cifarops/philox.h): alpha = u(i, stream 0), beta =
// u(i, stream 1), with i = n (the sample) at level "sample" and i = 0 at level "batch"; or they are
// constants (0.5: "even" and evaluation), or explicit tensors in the compute type.
//
// Torch-free: included by csrc/cpu/shake_shake.cpp and csrc/cuda/shake_shake.cu.
#pragma once

#include <stdint.h>

#include "cifarops/macros.h"
#include "cifarops/philox.h"

namespace cifarops {

constexpr uint32_t kShakeShakeStreams = 2;  // stream 0: alpha, stream 1: beta
constexpr uint32_t kShakeShakeAlphaStream = 0;
constexpr uint32_t kShakeShakeBetaStream = 1;

// Where one coefficient comes from: explicit values (data[n * stride], in the compute type; stride 0 for
// one value), else a draw of `stream` (stream >= 0), else `constant`.
struct ShakeShakeCoef {
  const void* data = nullptr;
  int64_t stride = 0;
  int32_t stream = -1;
  bool per_sample = true;  // drawn: index n (level "sample") or 0 (level "batch")
  float constant = 0.5f;

  CIFAROPS_INLINE bool draws() const { return data == nullptr && stream >= 0; }

  template <typename acc_t>
  CIFAROPS_INLINE acc_t value(PhiloxState s, int64_t n) const {
    if (data != nullptr) return static_cast<const acc_t*>(data)[n * stride];
    if (stream >= 0) {
      return static_cast<acc_t>(philox_uniform(s, per_sample ? static_cast<uint64_t>(n) : 0u, static_cast<uint32_t>(stream)));
    }
    return static_cast<acc_t>(constant);
  }
};

// Tensors are dense in one memory format. Sample n occupies memory elements [n * sample_size, (n + 1) *
// sample_size) in NCHW and channels_last alike (the batch dimension is outermost in both).
// Forward: a = h1, b = h2, c = shortcut (or nullptr), out0 = y, coef = alpha.
// Backward: a = grad_y, out0 = grad_h1, out1 = grad_h2, coef = beta.
struct ShakeShakeParams {
  const void* a = nullptr;
  const void* b = nullptr;
  const void* c = nullptr;
  void* out0 = nullptr;
  void* out1 = nullptr;
  ShakeShakeCoef coef;
  int64_t batch = 0, sample_size = 0;

  CIFAROPS_INLINE int64_t numel() const { return batch * sample_size; }
};

// alpha * h1 + (1 - alpha) * h2: exact for alpha = 0.5 and for alpha in {0, 1}.
template <typename acc_t>
CIFAROPS_INLINE acc_t shake_shake_mix(acc_t alpha, acc_t h1, acc_t h2) {
  return alpha * h1 + (acc_t(1) - alpha) * h2;
}

}  // namespace cifarops
