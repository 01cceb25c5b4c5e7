// ShakeDrop on CUDA: one memory-bound pass, out = shortcut + scale * h (math in shake_drop.h), with the
// noise drawn in the kernel from the CUDA generator's Philox state (graph-safe, as native dropout).
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "args/rng.h"
#include "args/shake_drop.h"
#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/shake_drop.h"
#include "philox_state.cuh"

namespace cifarops {
namespace {

// The kernel is a thin wrapper: its body, shake_drop_thread, and the launch geometry, shake_drop_launch, are
// host/device code in cifarops/shake_drop.h, which cpp_tests/kernel_grid_shake_drop.cpp runs on the host.
template <typename scalar_t, int kVec, typename index_t>
__global__ void __launch_bounds__(kElementwiseThreads) shake_drop_kernel(ShakeDropParams p, CudaRng rng) {
  p.rng = resolve_rng(rng);
  shake_drop_thread<scalar_t, kVec, index_t>(p, static_cast<index_t>(blockIdx.x), static_cast<index_t>(threadIdx.x),
                                             static_cast<index_t>(gridDim.x));
}

template <typename scalar_t>
void launch_typed(const ShakeDropParams& p, const CudaRng& rng, cudaStream_t stream) {
  const ShakeDropLaunch launch = shake_drop_launch<scalar_t>(p);
  shake_drop_dispatch<scalar_t>(launch, [&]<int kVec, typename index_t>() {
    shake_drop_kernel<scalar_t, kVec, index_t><<<launch.blocks, kElementwiseThreads, 0, stream>>>(p, rng);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

// The state comes from the generator (forward, nothing explicit), an explicit tensor, or none is needed. The
// kernel writes the state output only when this call allocated it (forward), never into a backward's input.
void shake_drop_run_cuda(ShakeDropCall& call, const at::Tensor& ref) {
  const bool explicit_state = call.state_in.has_value();
  const at::Tensor state_in = explicit_state ? call.state_in->contiguous() : at::Tensor();
  const bool writes_state = !call.state.defined();
  if (writes_state) call.state = empty_state(ref);
  const CudaRng rng = cuda_rng(ref.device(), call.draws && !explicit_state ? call.streams : 0,
                               explicit_state ? state_in.data_ptr<int64_t>() : nullptr,
                               writes_state ? call.state.data_ptr<int64_t>() : nullptr);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.out.scalar_type(), "shake_drop_cuda", [&] {
    launch_typed<scalar_t>(call.params, rng, at::cuda::getCurrentCUDAStream());
  });
}

namespace {

std::tuple<at::Tensor, at::Tensor> shake_drop_cuda(
    const at::Tensor& h, const std::optional<at::Tensor>& shortcut, double p_drop, at::ArrayRef<double> alpha_range,
    at::ArrayRef<double> beta_range, c10::string_view gate_level, c10::string_view level, bool training,
    const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& alpha,
    const std::optional<at::Tensor>& beta, const std::optional<at::Tensor>& rng_state) {
  const c10::cuda::CUDAGuard guard(h.device());  // allocations and the generator: h's device
  ShakeDropCall call = shake_drop_forward_call(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level,
                                               training, gate, alpha, beta, rng_state);
  shake_drop_run_cuda(call, h);
  return {call.out, call.state};
}

at::Tensor shake_drop_backward_cuda(const at::Tensor& grad_y, const at::Tensor& rng_state, double p_drop,
                                    at::ArrayRef<double> alpha_range, at::ArrayRef<double> beta_range,
                                    c10::string_view gate_level, c10::string_view level, bool training,
                                    const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& beta) {
  const c10::cuda::CUDAGuard guard(grad_y.device());
  ShakeDropCall call = shake_drop_backward_call(grad_y, rng_state, p_drop, alpha_range, beta_range, gate_level,
                                                level, training, gate, beta);
  shake_drop_run_cuda(call, grad_y);
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CUDA, m) {
  m.impl("shake_drop", &shake_drop_cuda);
  m.impl("_shake_drop_backward", &shake_drop_backward_cuda);
}

}  // namespace cifarops
