// Storage types of CUDA kernels: conversions to and from the arithmetic type, and the dtype switch. torch builds extensions with
// __CUDA_NO_HALF_CONVERSIONS__ and __CUDA_NO_BFLOAT16_CONVERSIONS__, so __half and __nv_bfloat16 need the
// explicit intrinsics; float and double convert as usual.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "cifarops/tensor_types.h"

namespace cifarops {

// Specialisations of to_acc / from_acc (tensor_types.h) for CUDA's half types.
template <>
CIFAROPS_INLINE float to_acc<float, __half>(__half v) {
  return __half2float(v);
}
template <>
CIFAROPS_INLINE float to_acc<float, __nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
CIFAROPS_INLINE __half from_acc<__half, float>(float v) {
  return __float2half_rn(v);
}
template <>
CIFAROPS_INLINE __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with the CUDA storage type T of `dtype`: one switch for every launcher.
template <typename F>
cudaError_t dispatch_floating(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32: return f(TypeTag<float>{});
    case DType::Float64: return f(TypeTag<double>{});
    case DType::Float16: return f(TypeTag<__half>{});
    case DType::BFloat16: return f(TypeTag<__nv_bfloat16>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace cifarops
