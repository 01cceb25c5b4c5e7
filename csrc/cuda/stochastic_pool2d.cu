// Stochastic pooling on CUDA: one thread per output forward, one per input backward, which gathers from the
// windows that contain it (math, kernel body and launch geometry in cifarops/stochastic_pool2d.h): no atomics,
// deterministic. The training draw's uniforms come from the CUDA generator's Philox state, unpacked in the kernel
// (graph-safe, as native dropout); the backward reads the drawn offsets, so it needs no state.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "args/rng.h"
#include "args/signatures.h"
#include "args/stochastic_pool2d.h"
#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/stochastic_pool2d.h"
#include "philox_state.cuh"

namespace cifarops {
namespace {

// A thin wrapper: the body, stochastic_pool_thread, and the launch geometry live in cifarops/stochastic_pool2d.h,
// which cpp_tests/kernel_grid_stochastic_pool2d.cpp runs on the host. Only the training draw resolves a state
// (block 0 thread 0 writes the one it used); the other kinds draw nothing.
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kElementwiseThreads) stochastic_pool_kernel(StochasticPoolParams p, CudaRng rng) {
  if (p.kind == StochasticPoolKind::Sample) p.rng = resolve_rng(rng);
  stochastic_pool_thread<scalar_t, index_t>(p, static_cast<index_t>(blockIdx.x), static_cast<index_t>(threadIdx.x),
                                            static_cast<index_t>(gridDim.x));
}

void launch_kernel(const StochasticPoolCall& call, const StochasticPoolLaunch& launch, const CudaRng& rng) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.out.scalar_type(), "stochastic_pool2d_cuda", [&] {
    stochastic_pool_dispatch(launch, [&](auto index) {
      using index_t = decltype(index);
      stochastic_pool_kernel<scalar_t, index_t><<<launch.blocks, kElementwiseThreads, 0, stream>>>(call.params, rng);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// A call without a state (the expectation, both backward kinds); no items launch nothing.
void run(const StochasticPoolCall& call) {
  const StochasticPoolLaunch geometry = stochastic_pool_launch(call.params);
  if (geometry.launch) launch_kernel(call, geometry, CudaRng{});
}

// The training draw: returns the state used, as the CPU op does (the explicit one, else the generator's when it
// draws, else zeros). The kernel writes it; a call without items launches no kernel, so the state is made here,
// on the device (no host sync, graph-safe), and a drawing call still reserves the generator's offset.
at::Tensor run_sample(const StochasticPoolCall& call, const at::Tensor& x) {
  const bool explicit_state = call.state_in.has_value();
  const at::Tensor state_in = explicit_state ? call.state_in->contiguous() : at::Tensor();
  const StochasticPoolLaunch geometry = stochastic_pool_launch(call.params);
  if (!geometry.launch) {
    if (explicit_state) return empty_state(x).copy_(state_in.view({2}));
    if (call.draws) return draw_cuda_rng_state(x.device(), kStochasticPoolStreams);
    return at::zeros({2}, x.options().dtype(at::kLong));
  }
  at::Tensor state = empty_state(x);
  const CudaRng rng = cuda_rng(x.device(), call.draws && !explicit_state ? kStochasticPoolStreams : 0,
                               explicit_state ? state_in.data_ptr<int64_t>() : nullptr, state.data_ptr<int64_t>());
  launch_kernel(call, geometry, rng);
  return state;
}

Tensor3 stochastic_pool_cuda(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, bool ceil_mode, const OptTensor& uniforms,
                             const OptTensor& rng_state) {
  const c10::cuda::CUDAGuard guard(x.device());
  // Every check first: a call that fails them reserves nothing of the generator.
  const StochasticPoolCall call =
      stochastic_pool_forward_call(x, kernel_size, stride, padding, ceil_mode, uniforms, rng_state, true);
  at::Tensor state = run_sample(call, x);
  return {call.out, call.offset, state};
}

at::Tensor stochastic_pool_backward_cuda(const at::Tensor& grad_y, const at::Tensor& offset,
                                         c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                                         at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode) {
  const c10::cuda::CUDAGuard guard(grad_y.device());
  const StochasticPoolCall call =
      stochastic_pool_backward_call(grad_y, offset, input_size, kernel_size, stride, padding, ceil_mode);
  run(call);
  return call.out;
}

at::Tensor stochastic_pool_expectation_cuda(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                            at::IntArrayRef padding, bool ceil_mode) {
  const c10::cuda::CUDAGuard guard(x.device());
  const StochasticPoolCall call =
      stochastic_pool_forward_call(x, kernel_size, stride, padding, ceil_mode, std::nullopt, std::nullopt, false);
  run(call);
  return call.out;
}

at::Tensor stochastic_pool_expectation_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                     at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                     at::IntArrayRef padding, bool ceil_mode) {
  const c10::cuda::CUDAGuard guard(x.device());
  const StochasticPoolCall call =
      stochastic_pool_expectation_backward_call(grad_y, x, kernel_size, stride, padding, ceil_mode);
  run(call);
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CUDA, m) {
  m.impl("stochastic_pool2d", &stochastic_pool_cuda);
  m.impl("_stochastic_pool2d_backward", &stochastic_pool_backward_cuda);
  m.impl("stochastic_pool2d_expectation", &stochastic_pool_expectation_cuda);
  m.impl("_stochastic_pool2d_expectation_backward", &stochastic_pool_expectation_backward_cuda);
}

}  // namespace cifarops
