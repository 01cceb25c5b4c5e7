// Fractional max-pooling on CUDA: one thread per output in forward, one per input in backward, which
// gathers from the few outputs whose regions contain it (math, kernel bodies and launch geometry in
// cifarops/fractional_max_pool2d.h): no zero-fill, no atomics, deterministic. Interval arithmetic runs in the
// compute type, as ATen's CUDA kernel does.
//
// Draws made by the op come from the CUDA generator's Philox state, unpacked in the kernel (graph-safe,
// philox_state.cuh): the samples in the main kernel itself; random sequences in a boundary table that
// fmp_table_kernel writes first (the one second kernel of the op). The kernel that resolves the state writes
// the {seed, offset} it used; a call with explicit draws writes zeros.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "args/fractional_max_pool2d.h"
#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/fractional_max_pool2d.h"
#include "cuda/philox_state.cuh"

namespace cifarops {
namespace {

// The state of a kernel that draws (kDraw), else zeros written to rng.out when it is wanted.
template <bool kDraw>
__device__ __forceinline__ PhiloxState kernel_state(const CudaRng& rng) {
  if (kDraw) return resolve_rng(rng);
  if (rng.out != nullptr && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0 && threadIdx.x == 0) {
    rng.out[0] = 0;
    rng.out[1] = 0;
  }
  return PhiloxState{};
}

// The kernels are thin wrappers: their bodies, fmp_*_thread, and the launch geometry, fmp_launch, are host/device
// code in cifarops/fractional_max_pool2d.h, which cpp_tests/kernel_grid_fmp.cpp runs on the host. kDraw only
// chooses where the state comes from.
// The minimum of one block per SM stated, forward and backward: with __launch_bounds__(kElementwiseThreads) alone,
// ptxas (CUDA 13.0) kept the grid-stride counter of the float64 drawn forward in local memory, and capped the drawn
// int64 backward of Graham's exact regions at 64 registers with spills (scripts/kernel_report.py).
template <typename scalar_t, typename index_t, bool kChannelFastest, bool kDraw>
__global__ void __launch_bounds__(kElementwiseThreads, 1)
    fmp_forward_kernel(const FmpParams p, const CudaRng rng, index_t total) {
  const PhiloxState state = kernel_state<kDraw>(rng);
  fmp_forward_thread<scalar_t, index_t, kChannelFastest>(p, state, total, static_cast<index_t>(blockIdx.x),
                                                         static_cast<index_t>(threadIdx.x),
                                                         static_cast<index_t>(gridDim.x));
}

template <typename scalar_t, typename index_t, bool kChannelFastest, bool kDraw>
__global__ void __launch_bounds__(kElementwiseThreads, 1)
    fmp_backward_kernel(const FmpParams p, const CudaRng rng, index_t total) {
  const PhiloxState state = kDraw ? resolve_rng(rng) : PhiloxState{};
  fmp_backward_thread<scalar_t, index_t, kChannelFastest>(p, state, total, static_cast<index_t>(blockIdx.x),
                                                          static_cast<index_t>(threadIdx.x),
                                                          static_cast<index_t>(gridDim.x));
}

__global__ void __launch_bounds__(kElementwiseThreads) fmp_table_kernel(const FmpParams p, const CudaRng rng,
                                                                        int64_t* table, int64_t length) {
  const PhiloxState state = resolve_rng(rng);
  fmp_table_thread(p, state, table, length, static_cast<int64_t>(blockIdx.x), static_cast<int64_t>(threadIdx.x),
                   static_cast<int64_t>(gridDim.x));
}

template <bool kForward, typename scalar_t>
void launch_main(const FmpParams& p, const CudaRng& rng, bool draw, cudaStream_t stream) {
  const FmpLaunch launch = fmp_launch(p, kForward);
  if (!launch.launch) return;
  fmp_dispatch(launch, [&]<typename index_t, bool kChannelFastest>() {
    const index_t n = static_cast<index_t>(launch.total);
    const unsigned grid = launch.blocks;
    if (kForward) {
      if (draw) {
        fmp_forward_kernel<scalar_t, index_t, kChannelFastest, true><<<grid, kElementwiseThreads, 0, stream>>>(p, rng, n);
      } else {
        fmp_forward_kernel<scalar_t, index_t, kChannelFastest, false><<<grid, kElementwiseThreads, 0, stream>>>(p, rng, n);
      }
    } else if (draw) {
      fmp_backward_kernel<scalar_t, index_t, kChannelFastest, true><<<grid, kElementwiseThreads, 0, stream>>>(p, rng, n);
    } else {
      fmp_backward_kernel<scalar_t, index_t, kChannelFastest, false><<<grid, kElementwiseThreads, 0, stream>>>(p, rng, n);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Runs one call: the table kernel first for random sequences, then the main kernel. `out`: the forward's state
// output (nullptr in backward).
template <bool kForward>
void run(FmpCall& call, const at::Tensor& like, at::ScalarType type, int64_t* out) {
  FmpParams& p = call.params;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor explicit_state;
  const int64_t* explicit_ptr = nullptr;
  if (call.explicit_state != nullptr) {
    explicit_state = call.explicit_state->contiguous();
    explicit_ptr = explicit_state.data_ptr<int64_t>();
  }
  CudaRng rng;
  rng.out = out;
  if (call.draw != FmpDraw::None) rng = cuda_rng(like.device(), kFmpStreams, explicit_ptr, out);
  bool draw = call.draw == FmpDraw::Samples;
  at::Tensor table;
  if (call.draw == FmpDraw::Sequences) {
    table = fmp_sequence_table(like, p);
    fmp_table_kernel<<<fmp_table_blocks(p), kElementwiseThreads, 0, stream>>>(p, rng, table.data_ptr<int64_t>(),
                                                                             table.size(3));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    rng = CudaRng{};  // the table kernel wrote the state
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "fractional_max_pool2d_cuda",
                                  [&] { launch_main<kForward, scalar_t>(p, rng, draw, stream); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fractional_max_pool2d_cuda(
    const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef output_size, c10::string_view regions,
    const std::optional<at::Tensor>& samples, const std::optional<at::Tensor>& boundaries, bool return_indices,
    c10::string_view sequence, bool per_image, const std::optional<at::Tensor>& rng_state) {
  const c10::cuda::CUDAGuard guard(x.device());
  FmpCall call = fmp_forward_call(x, kernel_size, output_size, regions, samples, boundaries, return_indices, sequence,
                                  per_image, rng_state);
  at::Tensor state = at::empty({2}, x.options().dtype(at::kLong));
  run<true>(call, x, x.scalar_type(), state.data_ptr<int64_t>());
  return {call.output, call.index, state};
}

at::Tensor fractional_max_pool2d_backward_cuda(const at::Tensor& grad_y, const at::Tensor& index,
                                               at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                               c10::string_view regions, const std::optional<at::Tensor>& samples,
                                               const std::optional<at::Tensor>& boundaries, c10::string_view sequence,
                                               bool per_image, const std::optional<at::Tensor>& rng_state) {
  const c10::cuda::CUDAGuard guard(grad_y.device());
  FmpCall call = fmp_backward_call(grad_y, index, input_size, kernel_size, regions, samples, boundaries, sequence,
                                   per_image, rng_state);
  run<false>(call, grad_y, grad_y.scalar_type(), nullptr);
  return call.grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CUDA, m) {
  m.impl("fractional_max_pool2d", &fractional_max_pool2d_cuda);
  m.impl("_fractional_max_pool2d_backward", &fractional_max_pool2d_backward_cuda);
}

}  // namespace cifarops
