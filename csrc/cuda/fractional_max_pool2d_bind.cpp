// Torch side of fractional max-pooling on CUDA: device guard, current stream, torch-free launchers.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "args/fractional_max_pool2d.h"
#include "cifarops/cuda_launchers.h"

namespace cifarops {
namespace {

std::tuple<at::Tensor, at::Tensor> fractional_max_pool2d_cuda(const at::Tensor& x, at::IntArrayRef kernel_size,
                                                              at::IntArrayRef output_size, c10::string_view regions,
                                                              const std::optional<at::Tensor>& samples,
                                                              const std::optional<at::Tensor>& boundaries,
                                                              bool return_indices) {
  const c10::cuda::CUDAGuard guard(x.device());
  const FmpCall call =
      fmp_forward_call(x, kernel_size, output_size, std::string(regions), samples, boundaries, return_indices);
  C10_CUDA_CHECK(launch_fractional_max_pool2d_forward(call.params, at::cuda::getCurrentCUDAStream()));
  return {call.output, call.index};
}

at::Tensor fractional_max_pool2d_backward_cuda(const at::Tensor& grad_y, const at::Tensor& index,
                                               at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                               c10::string_view regions, const std::optional<at::Tensor>& samples,
                                               const std::optional<at::Tensor>& boundaries) {
  const c10::cuda::CUDAGuard guard(grad_y.device());
  const FmpCall call =
      fmp_backward_call(grad_y, index, input_size, kernel_size, std::string(regions), samples, boundaries);
  C10_CUDA_CHECK(launch_fractional_max_pool2d_backward(call.params, at::cuda::getCurrentCUDAStream()));
  return call.grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CUDA, m) {
  m.impl("fractional_max_pool2d", &fractional_max_pool2d_cuda);
  m.impl("_fractional_max_pool2d_backward", &fractional_max_pool2d_backward_cuda);
}

}  // namespace cifarops
