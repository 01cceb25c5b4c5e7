// Torch-free description of element types, so that CUDA launchers can be compiled with plain nvcc.
#pragma once

#include "cifarops/macros.h"

namespace cifarops {

// The type arithmetic is done in: double for double tensors, float for everything else.
template <typename scalar_t>
struct OpMath {
  using type = float;
};
template <>
struct OpMath<double> {
  using type = double;
};

// Storage type <-> arithmetic type: static_cast, which c10::Half and c10::BFloat16 support on the host and
// the device.
template <typename acc_t, typename scalar_t>
CIFAROPS_INLINE acc_t to_acc(scalar_t v) {
  return static_cast<acc_t>(v);
}

template <typename scalar_t, typename acc_t>
CIFAROPS_INLINE scalar_t from_acc(acc_t v) {
  return static_cast<scalar_t>(v);
}

}  // namespace cifarops
