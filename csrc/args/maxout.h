// Torch side of maxout and probabilistic maxout, shared by every compiled backend: argument checks naming
// the argument (the same exception types and messages as the Python twin in python/cifarops/ops/maxout.py),
// the (outer, C, inner) views, output allocation and the torch-free MaxoutParams. The autograd formulas
// (torch::autograd::Function, registered for the Autograd key) live in maxout.cpp.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "args/common.h"
#include "cifarops/maxout.h"

namespace cifarops {

struct MaxoutCall {
  at::Tensor output, index, grad_input;
  at::Tensor explicit_state;  // Sample: the caller's rng_state, dense (undefined: draw from the generator)
  MaxoutParams params;
  KeepAlive keep_alive;
};

// maxout / probabilistic_maxout / probabilistic_maxout_expectation: checks everything (before any draw),
// allocates y (and the chosen piece for Max, Sample). The backend then draws the state (Sample) and runs.
MaxoutCall maxout_forward_call(const at::Tensor& x, int64_t pieces, int64_t dim, c10::string_view grouping,
                               MaxoutMode mode, double temperature, const std::optional<at::Tensor>& rng_state,
                               const char* op);

// _maxout_backward: grad_x from grad_y and the chosen pieces.
MaxoutCall maxout_backward_call(const at::Tensor& grad_y, const at::Tensor& index, int64_t pieces, int64_t dim,
                                c10::string_view grouping);

// _probabilistic_maxout_expectation_backward: grad_x from grad_y and x.
MaxoutCall maxout_expectation_backward_call(const at::Tensor& grad_y, const at::Tensor& x, int64_t pieces,
                                            int64_t dim, c10::string_view grouping, double temperature);

}  // namespace cifarops
