// Torch side of ShakeDrop on CUDA: device guard, current stream, and the torch-free launcher.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "args/shake_drop.h"
#include "cifarops/cuda_launchers.h"

namespace cifarops {
namespace {

// Callers hold a CUDAGuard for the input's device, so the current stream is that device's.
void run(const ShakeDropCall& call) {
  C10_CUDA_CHECK(launch_shake_drop(call.params, at::cuda::getCurrentCUDAStream()));
}

at::Tensor shake_drop_cuda(const at::Tensor& h, const std::optional<at::Tensor>& shortcut, const at::Tensor& gate,
                           const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& beta,
                           const std::optional<at::Tensor>& seed, at::ArrayRef<double> alpha_range,
                           at::ArrayRef<double> beta_range) {
  const c10::cuda::CUDAGuard guard(h.device());  // allocations below land on h's device
  const ShakeDropCall call = shake_drop_forward_call(h, shortcut, gate, alpha, beta, seed, alpha_range, beta_range);
  run(call);
  return call.out;
}

at::Tensor shake_drop_backward_cuda(const at::Tensor& grad_y, const at::Tensor& gate,
                                    const std::optional<at::Tensor>& beta, const std::optional<at::Tensor>& seed,
                                    at::ArrayRef<double> beta_range) {
  const c10::cuda::CUDAGuard guard(grad_y.device());
  const ShakeDropCall call = shake_drop_backward_call(grad_y, gate, beta, seed, beta_range);
  run(call);
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CUDA, m) {
  m.impl("shake_drop", &shake_drop_cuda);
  m.impl("_shake_drop_backward", &shake_drop_backward_cuda);
}

}  // namespace cifarops
