// Drop-Activation on CUDA: one memory-bound pass (math in drop_activation.h), the mask drawn in the kernel from
// the CUDA generator's Philox state (graph-safe, as native dropout) and regenerated in backward.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "args/drop_activation.h"
#include "args/rng.h"
#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/drop_activation.h"
#include "philox_state.cuh"

namespace cifarops {
namespace {

// A thin wrapper: the body, drop_activation_thread, and the launch geometry live in cifarops/drop_activation.h,
// which cpp_tests/kernel_grid_drop_activation.cpp runs on the host.
template <typename scalar_t, int kVec, typename index_t>
__global__ void __launch_bounds__(kElementwiseThreads) drop_activation_kernel(DropActivationParams p, CudaRng rng) {
  p.rng = resolve_rng(rng);
  drop_activation_thread<scalar_t, kVec, index_t>(p, static_cast<index_t>(blockIdx.x),
                                                  static_cast<index_t>(threadIdx.x), static_cast<index_t>(gridDim.x));
}

// The state comes from the generator (forward, drawing), an explicit tensor, or none is needed; the kernel writes
// the state output only when this call allocated it (forward).
void run(DropActivationCall& call, const at::Tensor& ref) {
  const bool explicit_state = call.state_in.has_value();
  const at::Tensor state_in = explicit_state ? call.state_in->contiguous() : at::Tensor();
  const bool writes_state = !call.state.defined();
  if (writes_state) call.state = empty_state(ref);
  const CudaRng rng = cuda_rng(ref.device(), call.draws && !explicit_state ? kDropActivationStreams : 0,
                               explicit_state ? state_in.data_ptr<int64_t>() : nullptr,
                               writes_state ? call.state.data_ptr<int64_t>() : nullptr);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.out.scalar_type(), "drop_activation_cuda", [&] {
    const DropActivationLaunch launch = drop_activation_launch<scalar_t>(call.params);
    drop_activation_dispatch<scalar_t>(launch, [&]<int kVec, typename index_t>() {
      drop_activation_kernel<scalar_t, kVec, index_t><<<launch.blocks, kElementwiseThreads, 0, stream>>>(call.params,
                                                                                                       rng);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor> drop_activation_cuda(const at::Tensor& x, double keep, bool training,
                                                        const std::optional<at::Tensor>& mask,
                                                        const std::optional<at::Tensor>& rng_state) {
  const c10::cuda::CUDAGuard guard(x.device());
  DropActivationCall call = drop_activation_forward_call(x, keep, training, mask, rng_state);
  run(call, x);
  return {call.out, call.state};
}

at::Tensor drop_activation_inplace_cuda(at::Tensor& x, double keep, bool training,
                                        const std::optional<at::Tensor>& mask,
                                        const std::optional<at::Tensor>& rng_state) {
  const c10::cuda::CUDAGuard guard(x.device());
  DropActivationCall call = drop_activation_inplace_call(x, keep, training, mask, rng_state);
  run(call, x);
  if (call.into.defined()) x.copy_(call.out);
  return call.state;
}

at::Tensor drop_activation_backward_cuda(const at::Tensor& grad_y, const at::Tensor& y, const at::Tensor& rng_state,
                                         double keep, bool training, const std::optional<at::Tensor>& mask) {
  const c10::cuda::CUDAGuard guard(grad_y.device());
  DropActivationCall call = drop_activation_backward_call(grad_y, y, rng_state, keep, training, mask);
  run(call, grad_y);
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CUDA, m) {
  m.impl("drop_activation", &drop_activation_cuda);
  m.impl("drop_activation_", &drop_activation_inplace_cuda);
  m.impl("_drop_activation_backward", &drop_activation_backward_cuda);
}

}  // namespace cifarops
