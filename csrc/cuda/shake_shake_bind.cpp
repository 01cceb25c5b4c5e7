// Torch side of Shake-Shake on CUDA: device guard, current stream, and the torch-free launchers.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "args/shake_shake.h"
#include "cifarops/cuda_launchers.h"

namespace cifarops {
namespace {

at::Tensor shake_shake_cuda(const at::Tensor& h1, const at::Tensor& h2, const std::optional<at::Tensor>& shortcut,
                            const at::Tensor& alpha, const at::Tensor& beta) {
  const c10::cuda::CUDAGuard guard(h1.device());
  const ShakeShakeCall call = shake_shake_forward_call(h1, h2, shortcut, alpha, beta);
  C10_CUDA_CHECK(launch_shake_shake_forward(call.params, at::cuda::getCurrentCUDAStream()));
  return call.out0;
}

std::tuple<at::Tensor, at::Tensor> shake_shake_backward_cuda(const at::Tensor& grad_y, const at::Tensor& beta) {
  const c10::cuda::CUDAGuard guard(grad_y.device());
  const ShakeShakeCall call = shake_shake_backward_call(grad_y, beta);
  C10_CUDA_CHECK(launch_shake_shake_backward(call.params, at::cuda::getCurrentCUDAStream()));
  return {call.out0, call.out1};
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CUDA, m) {
  m.impl("shake_shake", &shake_shake_cuda);
  m.impl("_shake_shake_backward", &shake_shake_backward_cuda);
}

}  // namespace cifarops
