// Argument checks shared by every op's torch-side code. Each message starts with the op's public name
// and names the offending argument, so users see what to fix.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/util/SmallVector.h>

#include <cstdint>

#include "args/cpu_output_cache.h"
#include "cifarops/tensor_types.h"

namespace cifarops {

// The dense copies a call's parameter struct points into, kept until the kernel has run: inline up to four, so
// that a call makes no heap allocation for the list.
using KeepAlive = c10::SmallVector<at::Tensor, 4>;

// float64 tensors compute in float64, every other floating type in float32.
inline at::ScalarType opmath_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// An (N, C, *spatial) input of a supported floating dtype (TypeError / ValueError, as the Python twin).
inline void check_nc_input(const at::Tensor& t, const char* name, const char* op) {
  const auto type = t.scalar_type();
  TORCH_CHECK_TYPE(type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16, op, ": ",
                   name, " must be float32, float64, float16 or bfloat16, got ", type);
  TORCH_CHECK_VALUE(t.dim() >= 2, op, ": ", name, " must have at least 2 dimensions (N, C, ...), got ", t.dim());
}

// `t` on `ref`'s device (ValueError naming both).
inline void check_device(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name,
                         const char* op) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
                    ref.device());
}

// The dense layout kernels walk: channels_last when the input is stored that way, NCHW otherwise
// (other strides are copied into NCHW first).
inline at::MemoryFormat dense_format(const at::Tensor& t) {
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

// An uninitialised output. CPU outputs come from the CPU output cache (csrc/args/cpu_output_cache.h): a block an
// earlier output used where one of the size is kept, so that the kernel does not spend most of its time in page
// faults on fresh memory.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat format) {
  if (options.device().is_cpu() && !options.pinned_memory()) {
    return at::detail::empty_generic(sizes, cpu_output_allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                     c10::typeMetaToScalarType(options.dtype()), format);
  }
  return at::empty(sizes, options.memory_format(format));
}

inline at::Tensor empty_output_like(const at::Tensor& dense, at::MemoryFormat format) {
  return empty_output(dense.sizes(), dense.options(), format);
}

}  // namespace cifarops
