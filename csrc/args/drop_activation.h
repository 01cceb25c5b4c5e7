// Torch side of Drop-Activation, shared by every compiled backend: checks the op's arguments before anything is
// drawn (each error names the argument), brings the tensors into one dense memory format, allocates the output
// and fills the torch-free DropActivationParams that the CPU loop and the CUDA kernel read.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "args/common.h"
#include "cifarops/drop_activation.h"

namespace cifarops {

struct DropActivationCall {
  at::Tensor out;
  at::Tensor into;                     // in place, when x was not dense: the backend copies `out` into it after the run
  at::Tensor state;                    // the {seed, offset} output (forward) or input (backward)
  std::optional<at::Tensor> state_in;  // an explicit state to use instead of the generator's
  bool draws = false;                  // the mask is drawn from Philox
  DropActivationParams params;
  KeepAlive keep_alive;
};

// drop_activation: y = m ? relu(x) : x in training, the leaky ReLU of slope 1 - keep in evaluation; an explicit
// mask is a bool tensor of x's shape.
DropActivationCall drop_activation_forward_call(const at::Tensor& x, double keep, bool training,
                                                const std::optional<at::Tensor>& mask,
                                                const std::optional<at::Tensor>& rng_state);

// drop_activation_: the same in place, into x (which must not have elements that share memory).
DropActivationCall drop_activation_inplace_call(const at::Tensor& x, double keep, bool training,
                                                const std::optional<at::Tensor>& mask,
                                                const std::optional<at::Tensor>& rng_state);

// _drop_activation_backward: grad_x from grad_y and the forward's output y, the mask regenerated from rng_state.
DropActivationCall drop_activation_backward_call(const at::Tensor& grad_y, const at::Tensor& y,
                                                 const at::Tensor& rng_state, double keep, bool training,
                                                 const std::optional<at::Tensor>& mask);

}  // namespace cifarops
