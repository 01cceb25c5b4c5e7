// Torch-free description of element types, so that CUDA launchers can be compiled with plain nvcc.
#pragma once

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

}  // namespace cifarops
