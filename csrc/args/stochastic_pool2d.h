// Torch side of stochastic pooling, shared by every compiled backend: checks the arguments before anything is
// drawn (each error names the argument; python/cifarops/ops/stochastic_pool2d.py has the twin), brings the tensors
// into one dense memory format (NCHW or channels_last, the input's), allocates the outputs and fills the
// torch-free StochasticPoolParams that the CPU loops and the CUDA kernels read.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "args/common.h"
#include "cifarops/stochastic_pool2d.h"

namespace cifarops {

struct StochasticPoolCall {
  at::Tensor out;                      // y, or grad_x
  at::Tensor offset;                   // the drawn offsets (Sample)
  std::optional<at::Tensor> state_in;  // an explicit state to use instead of the generator's
  bool draws = false;                  // the uniforms are drawn from Philox
  StochasticPoolParams params;
  KeepAlive keep_alive;
};

// stochastic_pool2d (sample = true) or stochastic_pool2d_expectation.
StochasticPoolCall stochastic_pool_forward_call(const at::Tensor& x, at::IntArrayRef kernel_size,
                                                at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                                                const std::optional<at::Tensor>& uniforms,
                                                const std::optional<at::Tensor>& rng_state, bool sample);

// _stochastic_pool2d_backward: grad_x from grad_y and the drawn offsets.
StochasticPoolCall stochastic_pool_backward_call(const at::Tensor& grad_y, const at::Tensor& offset,
                                                 c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                                                 at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode);

// _stochastic_pool2d_expectation_backward: grad_x from grad_y and x.
StochasticPoolCall stochastic_pool_expectation_backward_call(const at::Tensor& grad_y, const at::Tensor& x,
                                                             at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                             at::IntArrayRef padding, bool ceil_mode);

// Each output's chosen element of `values` (input-shaped), 0 where it chose none: the gradient of the backward
// op, which is linear in grad_y (plain ATen ops, themselves differentiable; symbolic sizes under torch.compile).
at::Tensor stochastic_pool_select(const at::Tensor& values, const at::Tensor& offset, at::IntArrayRef kernel_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding);

}  // namespace cifarops
