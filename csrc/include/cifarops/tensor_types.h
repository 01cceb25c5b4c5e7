// Torch-free description of element types, so that CUDA launchers can be compiled with plain nvcc.
#pragma once

#include "cifarops/macros.h"

namespace cifarops {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// The type arithmetic is done in: double for double tensors, float for everything else.
template <typename scalar_t>
struct OpMath {
  using type = float;
};
template <>
struct OpMath<double> {
  using type = double;
};

// Storage type <-> arithmetic type. CUDA's __half and __nv_bfloat16 specialise these in cuda_convert.cuh
// (torch builds with their implicit conversions disabled); every other type converts with static_cast.
template <typename acc_t, typename scalar_t>
CIFAROPS_INLINE acc_t to_acc(scalar_t v) {
  return static_cast<acc_t>(v);
}

template <typename scalar_t, typename acc_t>
CIFAROPS_INLINE scalar_t from_acc(acc_t v) {
  return static_cast<scalar_t>(v);
}

}  // namespace cifarops
