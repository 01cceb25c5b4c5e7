// Maxout and probabilistic maxout on CUDA: kernels, launchers and the CUDA registrations (math, kernel bodies
// and launch geometry in cifarops/maxout.h, checks and allocation in args/maxout.cpp). One thread per output
// element in forward (four consecutive ones for the probabilistic draw, which shares one Philox call), one per
// input element in backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "args/maxout.h"
#include "args/rng.h"
#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/maxout.h"
#include "cuda/philox_state.cuh"

namespace cifarops {
namespace {

// The kernels are thin wrappers: their bodies, maxout_*_thread, and the launch geometry, maxout_*_launch, are
// host/device code in cifarops/maxout.h, which cpp_tests/kernel_grid_maxout.cpp runs on the host.
// The minimum of one block per SM stated: with __launch_bounds__(kElementwiseThreads) alone, ptxas (CUDA 13.0)
// spilled the probabilistic (64-bit index) and float64 forwards on sm_80 (scripts/kernel_report.py --arch 80),
// and the float64 backward's 32-bit path once it divided with FastDivider.
template <typename scalar_t, typename index_t, bool kChannelFastest, bool kQuad>
__global__ void __launch_bounds__(kElementwiseThreads, 1) maxout_forward_kernel(const MaxoutParams p, const CudaRng rng) {
  PhiloxState state;
  if (p.mode == MaxoutMode::Sample) state = resolve_rng(rng);  // block 0 thread 0 writes the state used
  maxout_forward_thread<scalar_t, index_t, kChannelFastest, kQuad>(
      p, state, static_cast<index_t>(blockIdx.x), static_cast<index_t>(threadIdx.x), static_cast<index_t>(gridDim.x));
}

template <typename scalar_t, typename index_t, bool kChannelFastest>
__global__ void __launch_bounds__(kElementwiseThreads, 1) maxout_backward_kernel(const MaxoutParams p) {
  maxout_backward_thread<scalar_t, index_t, kChannelFastest>(p, static_cast<index_t>(blockIdx.x),
                                                             static_cast<index_t>(threadIdx.x),
                                                             static_cast<index_t>(gridDim.x));
}

void launch_forward(const MaxoutParams& p, const CudaRng& rng, at::ScalarType type) {
  const MaxoutLaunch launch = maxout_forward_launch(p);
  if (!launch.launch) return;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "maxout_forward_cuda", [&] {
    maxout_forward_dispatch(launch, [&]<typename index_t, bool kChannelFastest, bool kQuad>() {
      maxout_forward_kernel<scalar_t, index_t, kChannelFastest, kQuad>
          <<<launch.blocks, kElementwiseThreads, 0, stream>>>(p, rng);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_backward(const MaxoutParams& p, at::ScalarType type) {
  const MaxoutLaunch launch = maxout_backward_launch(p);
  if (!launch.launch) return;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "maxout_backward_cuda", [&] {
    maxout_backward_dispatch(launch, [&]<typename index_t, bool kChannelFastest>() {
      maxout_backward_kernel<scalar_t, index_t, kChannelFastest><<<launch.blocks, kElementwiseThreads, 0, stream>>>(p);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> maxout_cuda(const at::Tensor& x, int64_t pieces, int64_t dim,
                                               c10::string_view grouping) {
  const c10::cuda::CUDAGuard guard(x.device());
  const MaxoutCall call =
      maxout_forward_call(x, pieces, dim, grouping, MaxoutMode::Max, 1.0, std::nullopt, "cifarops.maxout");
  launch_forward(call.params, CudaRng{}, x.scalar_type());
  return {call.output, call.index};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> probabilistic_maxout_cuda(const at::Tensor& x, int64_t pieces,
                                                                         int64_t dim, c10::string_view grouping,
                                                                         double temperature,
                                                                         const std::optional<at::Tensor>& rng_state) {
  const c10::cuda::CUDAGuard guard(x.device());
  // Every check first: a call that fails them reserves nothing of the generator.
  const MaxoutCall call = maxout_forward_call(x, pieces, dim, grouping, MaxoutMode::Sample, temperature, rng_state,
                                              "cifarops.probabilistic_maxout");
  at::Tensor state = empty_state(x);
  const int64_t* explicit_state = call.explicit_state.defined() ? call.explicit_state.data_ptr<int64_t>() : nullptr;
  const CudaRng rng = cuda_rng(x.device(), 1, explicit_state, state.data_ptr<int64_t>());
  launch_forward(call.params, rng, x.scalar_type());
  return {call.output, call.index, state};
}

at::Tensor probabilistic_maxout_expectation_cuda(const at::Tensor& x, int64_t pieces, int64_t dim,
                                                 c10::string_view grouping, double temperature) {
  const c10::cuda::CUDAGuard guard(x.device());
  const MaxoutCall call = maxout_forward_call(x, pieces, dim, grouping, MaxoutMode::Expectation, temperature,
                                              std::nullopt, "cifarops.probabilistic_maxout");
  launch_forward(call.params, CudaRng{}, x.scalar_type());
  return call.output;
}

at::Tensor maxout_backward_cuda(const at::Tensor& grad_y, const at::Tensor& index, int64_t pieces, int64_t dim,
                                c10::string_view grouping) {
  const c10::cuda::CUDAGuard guard(grad_y.device());
  const MaxoutCall call = maxout_backward_call(grad_y, index, pieces, dim, grouping);
  launch_backward(call.params, grad_y.scalar_type());
  return call.grad_input;
}

at::Tensor probabilistic_maxout_expectation_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                          int64_t pieces, int64_t dim, c10::string_view grouping,
                                                          double temperature) {
  const c10::cuda::CUDAGuard guard(x.device());
  const MaxoutCall call = maxout_expectation_backward_call(grad_y, x, pieces, dim, grouping, temperature);
  launch_backward(call.params, x.scalar_type());
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
