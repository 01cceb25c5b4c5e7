// Torch side of maxout and probabilistic maxout on CUDA: device guard, current stream, torch-free launchers.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "args/maxout.h"
#include "cifarops/cuda_launchers.h"

namespace cifarops {
namespace {

MaxoutCall forward(const at::Tensor& x, int64_t pieces, int64_t dim, c10::string_view grouping, MaxoutMode mode,
                   double temperature, const std::optional<at::Tensor>& seed, const char* op) {
  const c10::cuda::CUDAGuard guard(x.device());
  MaxoutCall call = maxout_forward_call(x, pieces, dim, std::string(grouping), mode, temperature, seed, op);
  C10_CUDA_CHECK(launch_maxout_forward(call.params, at::cuda::getCurrentCUDAStream()));
  return call;
}

std::tuple<at::Tensor, at::Tensor> maxout_cuda(const at::Tensor& x, int64_t pieces, int64_t dim,
                                               c10::string_view grouping) {
  const MaxoutCall call = forward(x, pieces, dim, grouping, MaxoutMode::Max, 1.0, std::nullopt, "cifarops.maxout");
  return {call.output, call.index};
}

std::tuple<at::Tensor, at::Tensor> probabilistic_maxout_cuda(const at::Tensor& x, int64_t pieces, int64_t dim,
                                                             c10::string_view grouping, double temperature,
                                                             const at::Tensor& seed) {
  const MaxoutCall call =
      forward(x, pieces, dim, grouping, MaxoutMode::Sample, temperature, seed, "cifarops.probabilistic_maxout");
  return {call.output, call.index};
}

at::Tensor probabilistic_maxout_expectation_cuda(const at::Tensor& x, int64_t pieces, int64_t dim,
                                                 c10::string_view grouping, double temperature) {
  return forward(x, pieces, dim, grouping, MaxoutMode::Expectation, temperature, std::nullopt,
                 "cifarops.probabilistic_maxout")
      .output;
}

at::Tensor maxout_backward_cuda(const at::Tensor& grad_y, const at::Tensor& index, int64_t pieces, int64_t dim,
                                c10::string_view grouping) {
  const c10::cuda::CUDAGuard guard(grad_y.device());
  const MaxoutCall call = maxout_backward_call(grad_y, index, pieces, dim, std::string(grouping));
  C10_CUDA_CHECK(launch_maxout_backward(call.params, at::cuda::getCurrentCUDAStream()));
  return call.grad_input;
}

at::Tensor probabilistic_maxout_expectation_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                          int64_t pieces, int64_t dim, c10::string_view grouping,
                                                          double temperature) {
  const c10::cuda::CUDAGuard guard(x.device());
  const MaxoutCall call = maxout_expectation_backward_call(grad_y, x, pieces, dim, std::string(grouping), temperature);
  C10_CUDA_CHECK(launch_maxout_backward(call.params, at::cuda::getCurrentCUDAStream()));
  return call.grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CUDA, m) {
  m.impl("maxout", &maxout_cuda);
  m.impl("_maxout_backward", &maxout_backward_cuda);
  m.impl("probabilistic_maxout", &probabilistic_maxout_cuda);
  m.impl("probabilistic_maxout_expectation", &probabilistic_maxout_expectation_cuda);
  m.impl("_probabilistic_maxout_expectation_backward", &probabilistic_maxout_expectation_backward_cuda);
}

}  // namespace cifarops
