// Torch side of ShakeDrop, shared by every compiled backend: checks the op's arguments (each error names
// the argument), brings the tensors into one dense memory format, allocates the output and fills the
// torch-free ShakeDropParams that the CPU loop and the CUDA launcher read.
#pragma once

#include <ATen/ATen.h>

#include "cifarops/shake_drop.h"

namespace cifarops {

struct ShakeDropCall {
  at::Tensor out;  // what the op returns; kernels write params.out, which points into it
  ShakeDropParams params;
  std::vector<at::Tensor> keep_alive;  // dense copies the params point into
};

// shake_drop: out = shortcut + (gate + alpha - gate * alpha) * h.
ShakeDropCall shake_drop_forward_call(const at::Tensor& h, const std::optional<at::Tensor>& shortcut,
                                      const at::Tensor& gate, const std::optional<at::Tensor>& alpha,
                                      const std::optional<at::Tensor>& beta,
                                      const std::optional<at::Tensor>& seed, at::ArrayRef<double> alpha_range,
                                      at::ArrayRef<double> beta_range);

// _shake_drop_backward: grad_h = (gate + beta - gate * beta) * grad_y.
ShakeDropCall shake_drop_backward_call(const at::Tensor& grad_y, const at::Tensor& gate,
                                       const std::optional<at::Tensor>& beta,
                                       const std::optional<at::Tensor>& seed, at::ArrayRef<double> beta_range);

}  // namespace cifarops
