// Torch side of Shake-Shake, shared by every compiled backend: argument checks naming the argument (checked
// once, here, before anything is drawn), the explicit coefficients converted to the compute type, one dense
// memory format for all tensors, output allocation, and the torch-free ShakeShakeParams. The C++ autograd
// of cifarops::shake_shake and cifarops::_shake_shake_backward lives in shake_shake.cpp too.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "args/common.h"
#include "cifarops/shake_shake.h"

namespace cifarops {

struct ShakeShakeCall {
  at::Tensor out0, out1;  // forward: y; backward: grad_h1, grad_h2
  at::Tensor state;       // forward: the rng_state output (int64 {seed, offset}; zeros when nothing is drawn)
  ShakeShakeParams params;
  bool draws = false;  // forward: the call takes (or was given) an RNG state that alpha or the backward's beta uses
  KeepAlive keep_alive;
};

// shake_shake: y = shortcut + alpha * h1 + (1 - alpha) * h2. Checks everything (beta included, so that the
// backward cannot fail) and allocates y and the state; does not draw (the backend takes its state).
ShakeShakeCall shake_shake_forward_call(const at::Tensor& h1, const at::Tensor& h2,
                                        const std::optional<at::Tensor>& shortcut, c10::string_view forward_mode,
                                        c10::string_view backward_mode, c10::string_view level, bool training,
                                        const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& beta,
                                        const std::optional<at::Tensor>& rng_state);

// _shake_shake_backward: (beta * grad_y, (1 - beta) * grad_y), beta explicit or recomputed from rng_state:
// backward_mode "shake" (stream 1), "keep" (the forward's drawn alpha, stream 0) or "even" (0.5).
ShakeShakeCall shake_shake_backward_call(const at::Tensor& grad_y, const at::Tensor& rng_state,
                                         const std::optional<at::Tensor>& beta, c10::string_view backward_mode,
                                         c10::string_view level);

}  // namespace cifarops
