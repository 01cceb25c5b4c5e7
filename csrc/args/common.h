// Argument checks shared by every op's torch-side code. Each message starts with the op's public name
// and names the offending argument, so users see what to fix.
#pragma once

#include <ATen/ATen.h>

#include "cifarops/tensor_types.h"

namespace cifarops {

inline DType to_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK(false, "cifarops: unsupported dtype ", type);
  }
}

// float64 tensors compute in float64, every other floating type in float32.
inline at::ScalarType opmath_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// An (N, C, *spatial) input of a supported floating dtype.
inline void check_nc_input(const at::Tensor& t, const char* name, const char* op) {
  const auto type = t.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16, op, ": ",
              name, " must be float32, float64, float16 or bfloat16, got ", type);
  TORCH_CHECK(t.dim() >= 2, op, ": ", name, " must have at least 2 dimensions (N, C, ...), got ", t.dim());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* op) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but the input is on ",
              ref.device());
}

inline void check_opmath_dtype(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* op) {
  TORCH_CHECK(t.scalar_type() == opmath_type(ref), op, ": ", name, " must be ", opmath_type(ref), " for ",
              ref.scalar_type(), " input, got ", t.scalar_type());
}

inline void check_seed(const at::Tensor& seed, const at::Tensor& ref, const char* op) {
  check_same_device(seed, ref, "seed", op);
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 1, op,
              ": seed must be an int64 tensor of one element, got ", seed.scalar_type(), " with ", seed.numel(),
              " elements");
}

// The dense layout kernels walk: channels_last when the input is stored that way, NCHW otherwise
// (other strides are copied into NCHW first).
inline at::MemoryFormat dense_format(const at::Tensor& t) {
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

}  // namespace cifarops
