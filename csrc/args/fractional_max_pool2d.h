// Torch side of fractional max-pooling, shared by every compiled backend: argument checks naming the
// argument, the dense layout, output allocation and the torch-free FmpParams.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "cifarops/fractional_max_pool2d.h"

namespace cifarops {

struct FmpCall {
  at::Tensor output, index, grad_input;
  FmpParams params;
  std::vector<at::Tensor> keep_alive;
};

// fractional_max_pool2d: y and the chosen input of each output (int64 flat index, or a byte of offset).
FmpCall fmp_forward_call(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef output_size,
                         const std::string& regions, const std::optional<at::Tensor>& samples,
                         const std::optional<at::Tensor>& boundaries, bool return_indices);

// _fractional_max_pool2d_backward: grad_x from grad_y and the chosen inputs.
FmpCall fmp_backward_call(const at::Tensor& grad_y, const at::Tensor& index, at::IntArrayRef input_size,
                          at::IntArrayRef kernel_size, const std::string& regions,
                          const std::optional<at::Tensor>& samples, const std::optional<at::Tensor>& boundaries);

}  // namespace cifarops
