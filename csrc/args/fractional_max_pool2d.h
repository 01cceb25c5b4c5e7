// Torch side of fractional max-pooling, shared by every compiled backend: argument checks naming the
// argument (once, in C++: ValueError / TypeError as the Python twin in python/cifarops/ops), the dense layout,
// output allocation and the torch-free FmpParams. The C++ autograd of the cifarops:: ops lives in the .cpp.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "args/common.h"
#include "cifarops/fractional_max_pool2d.h"

namespace cifarops {

// What the call draws itself from the RNG state (neither samples nor boundaries given).
enum class FmpDraw : int { None = 0, Samples = 1, Sequences = 2 };

struct FmpCall {
  at::Tensor output, index, grad_input;
  at::Tensor state;  // forward: the {seed, offset} output (allocated; CPU fills it, CUDA's kernel writes it)
  FmpParams params;
  FmpDraw draw = FmpDraw::None;
  const at::Tensor* explicit_state = nullptr;  // the rng_state argument, when given and needed
  KeepAlive keep_alive;
};

// fractional_max_pool2d: y, the chosen input of each output (int64 flat index, or a byte of offset) and the
// RNG state used. Checks everything before anything is drawn.
FmpCall fmp_forward_call(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef output_size,
                         c10::string_view regions, const std::optional<at::Tensor>& samples,
                         const std::optional<at::Tensor>& boundaries, bool return_indices, c10::string_view sequence,
                         bool per_image, const std::optional<at::Tensor>& rng_state);

// _fractional_max_pool2d_backward: grad_x from grad_y and the chosen inputs (draws from rng_state when neither
// samples nor boundaries are given).
FmpCall fmp_backward_call(const at::Tensor& grad_y, const at::Tensor& index, at::IntArrayRef input_size,
                          at::IntArrayRef kernel_size, c10::string_view regions,
                          const std::optional<at::Tensor>& samples, const std::optional<at::Tensor>& boundaries,
                          c10::string_view sequence, bool per_image, const std::optional<at::Tensor>& rng_state);

// The boundary table of a call that draws random sequences, (N, C', 2, max(out) + 1) int64 on `like`'s device,
// uninitialised; p reads its boundaries from it (C' = 1: shared per image).
at::Tensor fmp_sequence_table(const at::Tensor& like, FmpParams& p);

// The same table filled on the CPU from `state` (fmp_random_sequence).
at::Tensor fmp_cpu_random_boundaries(FmpParams& p, PhiloxState state);

}  // namespace cifarops
