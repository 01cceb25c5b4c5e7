// Torch side of Shake-Shake, shared by every compiled backend: argument checks naming the argument, one
// dense memory format for all tensors, output allocation, and the torch-free ShakeShakeParams.
#pragma once

#include <ATen/ATen.h>

#include "cifarops/shake_shake.h"

namespace cifarops {

struct ShakeShakeCall {
  at::Tensor out0, out1;  // forward: y; backward: grad_h1, grad_h2
  ShakeShakeParams params;
  std::vector<at::Tensor> keep_alive;
};

// shake_shake: y = shortcut + alpha * h1 + (1 - alpha) * h2; beta is checked here and used by backward.
ShakeShakeCall shake_shake_forward_call(const at::Tensor& h1, const at::Tensor& h2,
                                        const std::optional<at::Tensor>& shortcut, const at::Tensor& alpha,
                                        const at::Tensor& beta);

// _shake_shake_backward: (beta * grad_y, (1 - beta) * grad_y).
ShakeShakeCall shake_shake_backward_call(const at::Tensor& grad_y, const at::Tensor& beta);

}  // namespace cifarops
