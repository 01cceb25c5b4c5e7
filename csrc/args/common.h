// Argument checks shared by every op's torch-side code. Each message starts with the op's public name
// and names the offending argument, so users see what to fix.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/SmallVector.h>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include <cstdint>
#include <cstdlib>
#include <string>

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

// The dense layout kernels walk: channels_last when the input is stored that way, NCHW otherwise
// (other strides are copied into NCHW first).
inline at::MemoryFormat dense_format(const at::Tensor& t) {
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

// An uninitialised output. On Linux CPU tensors of several megabytes, the 2 MiB-aligned interior of the
// fresh buffer is advised to use transparent huge pages before the kernel first touches it: a memory-bound
// CPU kernel otherwise spends most of its time in 4 KiB page faults (measured here: 9.6 ms to first-touch
// 32 MiB, 2.5 ms with huge pages). The buffer stays owned by torch's allocator; this is what torch itself
// does for every allocation under THP_MEM_ALLOC_ENABLE=1. CIFAROPS_HUGE_PAGES=0 turns it off.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat format) {
  at::Tensor out = at::empty(sizes, options.memory_format(format));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(1) << 21;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t end = begin + static_cast<uintptr_t>(out.nbytes());
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = end & ~(kHugePage - 1);
  static const bool enabled = [] {
    const char* setting = std::getenv("CIFAROPS_HUGE_PAGES");
    return setting == nullptr || std::string(setting) != "0";
  }();
  if (enabled && out.is_cpu() && last >= first + 2 * kHugePage) {
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // advice only: failure is harmless
  }
#endif
  return out;
}

inline at::Tensor empty_output_like(const at::Tensor& dense, at::MemoryFormat format) {
  return empty_output(dense.sizes(), dense.options(), format);
}

}  // namespace cifarops
