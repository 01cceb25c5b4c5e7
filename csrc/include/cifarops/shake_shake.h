// Shake-Shake's shared math (SPEC.md): forward y = shortcut + alpha * h1 + (1 - alpha) * h2, backward
// grad_h1 = beta * grad_y, grad_h2 = (1 - beta) * grad_y, with one alpha and one beta per sample.
//
// Torch-free: included by csrc/cpu/shake_shake.cpp and csrc/cuda/shake_shake.cu.
#pragma once

#include <stdint.h>

#include "cifarops/macros.h"
#include "cifarops/tensor_types.h"

namespace cifarops {

// Tensors are dense in one memory format. The sample index of memory element m is m / sample_size in
// NCHW and channels_last alike (the batch dimension is outermost in both), so the layout does not matter.
// Forward: a = h1, b = h2, c = shortcut (or nullptr), out0 = y, coef = alpha.
// Backward: a = grad_y, out0 = grad_h1, out1 = grad_h2, coef = beta.
struct ShakeShakeParams {
  const void* a = nullptr;
  const void* b = nullptr;
  const void* c = nullptr;
  void* out0 = nullptr;
  void* out1 = nullptr;
  const void* coef = nullptr;  // coef[n * coef_stride], in the OpMath type of dtype
  int64_t coef_stride = 0;
  int64_t batch = 0, sample_size = 0;
  DType dtype = DType::Float32;

  CIFAROPS_INLINE int64_t numel() const { return batch * sample_size; }
};

// alpha * h1 + (1 - alpha) * h2: exact for alpha = 0.5 and for alpha in {0, 1}.
template <typename acc_t>
CIFAROPS_INLINE acc_t shake_shake_mix(acc_t alpha, acc_t h1, acc_t h2) {
  return alpha * h1 + (acc_t(1) - alpha) * h2;
}

}  // namespace cifarops
