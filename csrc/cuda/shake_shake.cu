// Shake-Shake on CUDA: one memory-bound pass each way (math in cifarops/shake_shake.h). Forward reads h1, h2
// and the shortcut once and writes y; backward reads grad_y once and writes both branch gradients. alpha and
// beta are drawn in the kernel from the CUDA generator's Philox state (graph-safe, as native dropout), or
// from the explicit state the backward op and checkpoint replays pass (philox_state.cuh).
//
// Grid: blockIdx.y walks the samples, blockIdx.x the packets of one sample (cifarops/shake_shake.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "args/shake_shake.h"
#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/shake_shake.h"
#include "philox_state.cuh"

namespace cifarops {
namespace {

// The kernels are thin wrappers: their bodies, shake_shake_*_thread, and the launch geometry, shake_shake_launch,
// are host/device code in cifarops/shake_shake.h, which cpp_tests/kernel_grid_shake_shake.cpp runs on the host.
template <typename scalar_t, int kVec, typename index_t>
__global__ void __launch_bounds__(kElementwiseThreads)
    shake_shake_forward_kernel(const ShakeShakeParams p, const CudaRng rng) {
  const PhiloxState s = resolve_rng(rng);  // block 0 thread 0 also writes the state out
  shake_shake_forward_thread<scalar_t, kVec, index_t>(p, s, static_cast<index_t>(blockIdx.x),
                                                      static_cast<index_t>(threadIdx.x),
                                                      static_cast<index_t>(gridDim.x), blockIdx.y, gridDim.y);
}

template <typename scalar_t, int kVec, typename index_t>
__global__ void __launch_bounds__(kElementwiseThreads)
    shake_shake_backward_kernel(const ShakeShakeParams p, const CudaRng rng) {
  const PhiloxState s = resolve_rng(rng);
  shake_shake_backward_thread<scalar_t, kVec, index_t>(p, s, static_cast<index_t>(blockIdx.x),
                                                       static_cast<index_t>(threadIdx.x),
                                                       static_cast<index_t>(gridDim.x), blockIdx.y, gridDim.y);
}

template <bool kForward>
void launch(const ShakeShakeParams& p, const CudaRng& rng, at::ScalarType dtype) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "shake_shake_cuda", [&] {
    const ShakeShakeLaunch launch = shake_shake_launch<scalar_t>(p);
    const dim3 grid(launch.blocks, launch.sample_blocks);
    shake_shake_dispatch<scalar_t>(launch, [&]<int kVec, typename index_t>() {
      if constexpr (kForward) {
        shake_shake_forward_kernel<scalar_t, kVec, index_t><<<grid, kElementwiseThreads, 0, stream>>>(p, rng);
      } else {
        shake_shake_backward_kernel<scalar_t, kVec, index_t><<<grid, kElementwiseThreads, 0, stream>>>(p, rng);
      }
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> shake_shake_cuda(const at::Tensor& h1, const at::Tensor& h2,
                                                    const std::optional<at::Tensor>& shortcut,
                                                    c10::string_view forward_mode, c10::string_view backward_mode,
                                                    c10::string_view level, bool training,
                                                    const std::optional<at::Tensor>& alpha,
                                                    const std::optional<at::Tensor>& beta,
                                                    const std::optional<at::Tensor>& rng_state) {
  const c10::cuda::CUDAGuard guard(h1.device());
  ShakeShakeCall call =
      shake_shake_forward_call(h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, rng_state);
  // Everything is checked: only now is the generator's offset reserved (2 streams, when the call draws).
  const int64_t* explicit_state = nullptr;
  if (call.draws && rng_state.has_value()) {
    call.keep_alive.push_back(rng_state->contiguous());
    explicit_state = call.keep_alive.back().data_ptr<int64_t>();
  }
  const CudaRng rng = cuda_rng(h1.device(), call.draws ? kShakeShakeStreams : 0, explicit_state,
                               call.state.data_ptr<int64_t>());
  launch<true>(call.params, rng, h1.scalar_type());
  return {call.out0, call.state};
}

std::tuple<at::Tensor, at::Tensor> shake_shake_backward_cuda(const at::Tensor& grad_y, const at::Tensor& rng_state,
                                                             const std::optional<at::Tensor>& beta,
                                                             c10::string_view backward_mode, c10::string_view level) {
  const c10::cuda::CUDAGuard guard(grad_y.device());
  ShakeShakeCall call = shake_shake_backward_call(grad_y, rng_state, beta, backward_mode, level);
  const int64_t* explicit_state = nullptr;
  if (call.draws) {
    call.keep_alive.push_back(rng_state.contiguous());
    explicit_state = call.keep_alive.back().data_ptr<int64_t>();
  }
  const CudaRng rng = cuda_rng(grad_y.device(), 0, explicit_state, nullptr);
  launch<false>(call.params, rng, grad_y.scalar_type());
  return {call.out0, call.out1};
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CUDA, m) {
  m.impl("shake_shake", &shake_shake_cuda);
  m.impl("_shake_shake_backward", &shake_shake_backward_cuda);
}

}  // namespace cifarops
