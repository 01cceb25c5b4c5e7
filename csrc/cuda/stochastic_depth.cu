// Stochastic depth on CUDA: ShakeDrop's kernel (csrc/cuda/shake_drop.cu) with a zero coefficient and the gate
// worth s, one memory-bound pass of shortcut + b * s * h, the gate drawn in the kernel from the generator's
// Philox state (one stream).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "args/stochastic_depth.h"

namespace cifarops {
namespace {

std::tuple<at::Tensor, at::Tensor> stochastic_depth_cuda(const at::Tensor& h,
                                                         const std::optional<at::Tensor>& shortcut, double p,
                                                         c10::string_view mode, bool scale_by_keep, bool training,
                                                         const std::optional<at::Tensor>& gate,
                                                         const std::optional<at::Tensor>& rng_state) {
  const c10::cuda::CUDAGuard guard(h.device());  // allocations and the generator: h's device
  ShakeDropCall call = stochastic_depth_forward_call(h, shortcut, p, mode, scale_by_keep, training, gate, rng_state);
  shake_drop_run_cuda(call, h);
  return {call.out, call.state};
}

at::Tensor stochastic_depth_backward_cuda(const at::Tensor& grad_y, const at::Tensor& rng_state, double p,
                                          c10::string_view mode, bool scale_by_keep, bool training,
                                          const std::optional<at::Tensor>& gate) {
  const c10::cuda::CUDAGuard guard(grad_y.device());
  ShakeDropCall call = stochastic_depth_backward_call(grad_y, rng_state, p, mode, scale_by_keep, training, gate);
  shake_drop_run_cuda(call, grad_y);
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CUDA, m) {
  m.impl("stochastic_depth", &stochastic_depth_cuda);
  m.impl("_stochastic_depth_backward", &stochastic_depth_backward_cuda);
}

}  // namespace cifarops
