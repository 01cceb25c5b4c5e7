// Torch side of maxout and probabilistic maxout, shared by every compiled backend: argument checks naming
// the argument, the (outer, C, inner) views, output allocation and the torch-free MaxoutParams.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "cifarops/maxout.h"

namespace cifarops {

struct MaxoutCall {
  at::Tensor output, index, grad_input;
  MaxoutParams params;
  std::vector<at::Tensor> keep_alive;
};

// maxout / probabilistic_maxout / probabilistic_maxout_expectation: y (and the chosen piece for Max, Sample).
MaxoutCall maxout_forward_call(const at::Tensor& x, int64_t pieces, int64_t dim, const std::string& grouping,
                               MaxoutMode mode, double temperature, const std::optional<at::Tensor>& seed,
                               const char* op);

// _maxout_backward: grad_x from grad_y and the chosen pieces.
MaxoutCall maxout_backward_call(const at::Tensor& grad_y, const at::Tensor& index, int64_t pieces, int64_t dim,
                                const std::string& grouping);

// _probabilistic_maxout_expectation_backward: grad_x from grad_y and x.
MaxoutCall maxout_expectation_backward_call(const at::Tensor& grad_y, const at::Tensor& x, int64_t pieces,
                                            int64_t dim, const std::string& grouping, double temperature);

}  // namespace cifarops
