// Fractional max-pooling on CUDA: one thread per output in forward, one per input in backward, which
// gathers from the few outputs whose regions contain it (math in cifarops/fractional_max_pool2d.h): no
// zero-fill, no atomics, deterministic. Interval arithmetic runs in the compute type, as ATen's CUDA kernel
// does. Consecutive threads take consecutive addresses: along the width in NCHW, along the channels in
// channels_last (kChannelFastest). Thread indices split in 32 bits when the grid has fewer than 2^31 items.
//
// Draws made by the op come from the CUDA generator's Philox state, unpacked in the kernel (graph-safe,
// philox_state.cuh): the samples in the main kernel itself; random sequences in a boundary table that
// fmp_table_kernel writes first (the one second kernel of the op). The kernel that resolves the state writes
// the {seed, offset} it used; a call with explicit draws writes zeros.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "args/fractional_max_pool2d.h"
#include "cifarops/fractional_max_pool2d.h"
#include "cuda/philox_state.cuh"

namespace cifarops {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t items) {
  const int64_t blocks = (items + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);  // >= 1: the state is written
}

// Splits a linear thread index into (n, c, h, w) of an (N, C, height, width) grid, in index_t arithmetic.
template <typename index_t, bool kChannelFastest>
__device__ __forceinline__ void split(index_t t, index_t channels, index_t height, index_t width, int64_t& n,
                                      int64_t& c, int64_t& h, int64_t& w) {
  if (kChannelFastest) {
    c = t % channels;
    t /= channels;
    w = t % width;
    t /= width;
    h = t % height;
    n = t / height;
  } else {
    w = t % width;
    t /= width;
    h = t % height;
    t /= height;
    c = t % channels;
    n = t / channels;
  }
}

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

// The minimum of one block per SM stated: with __launch_bounds__(kThreads) alone, ptxas (CUDA 13.0) kept the
// grid-stride counter of the float64 drawn forward in local memory (scripts/kernel_report.py).
template <typename scalar_t, typename index_t, bool kChannelFastest, bool kDraw>
__global__ void __launch_bounds__(kThreads, 1) fmp_forward_kernel(const FmpParams p, const CudaRng rng, index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const PhiloxState state = kernel_state<kDraw>(rng);
  const index_t channels = static_cast<index_t>(p.channels), height = static_cast<index_t>(p.rows.out),
                width = static_cast<index_t>(p.cols.out);
  const index_t step = static_cast<index_t>(gridDim.x) * kThreads;
  for (index_t t = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; t < total; t += step) {
    int64_t n, c, oh, ow;
    split<index_t, kChannelFastest>(t, channels, height, width, n, c, oh, ow);
    fmp_forward_element<scalar_t, acc_t>(p, state, n, c, oh, ow);
  }
}

template <typename scalar_t, typename index_t, bool kChannelFastest, bool kDraw>
__global__ void __launch_bounds__(kThreads) fmp_backward_kernel(const FmpParams p, const CudaRng rng, index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const PhiloxState state = kDraw ? resolve_rng(rng) : PhiloxState{};
  const index_t channels = static_cast<index_t>(p.channels), height = static_cast<index_t>(p.rows.in),
                width = static_cast<index_t>(p.cols.in);
  const index_t step = static_cast<index_t>(gridDim.x) * kThreads;
  for (index_t t = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; t < total; t += step) {
    int64_t n, c, h, w;
    split<index_t, kChannelFastest>(t, channels, height, width, n, c, h, w);
    fmp_backward_element<scalar_t, acc_t>(p, state, n, c, h, w);
  }
}

// Random sequences: one thread per (draw plane, axis) writes a_0 .. a_out of its row of the table.
__global__ void __launch_bounds__(kThreads) fmp_table_kernel(const FmpParams p, const CudaRng rng, int64_t* table,
                                                             int64_t length) {
  const PhiloxState state = resolve_rng(rng);
  const int64_t lanes = p.batch * p.draw_channels * 2;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < lanes; t += step) {
    const int axis = static_cast<int>(t & 1);
    const FmpAxis& a = axis == 0 ? p.cols : p.rows;
    fmp_random_sequence(state, t >> 1, axis, a.in, a.out, length - 1, length, table + t * length, 1);
  }
}

template <bool kForward, typename scalar_t, typename index_t, bool kChannelFastest>
void launch_main(const FmpParams& p, const CudaRng& rng, bool draw, int64_t total, cudaStream_t stream) {
  const unsigned grid = blocks_for(total);
  const index_t n = static_cast<index_t>(total);
  if (kForward) {
    if (draw) {
      fmp_forward_kernel<scalar_t, index_t, kChannelFastest, true><<<grid, kThreads, 0, stream>>>(p, rng, n);
    } else {
      fmp_forward_kernel<scalar_t, index_t, kChannelFastest, false><<<grid, kThreads, 0, stream>>>(p, rng, n);
    }
  } else if (draw) {
    fmp_backward_kernel<scalar_t, index_t, kChannelFastest, true><<<grid, kThreads, 0, stream>>>(p, rng, n);
  } else {
    fmp_backward_kernel<scalar_t, index_t, kChannelFastest, false><<<grid, kThreads, 0, stream>>>(p, rng, n);
  }
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
    fmp_table_kernel<<<blocks_for(p.batch * p.draw_channels * 2), kThreads, 0, stream>>>(p, rng, table.data_ptr<int64_t>(),
                                                                                        table.size(3));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    rng = CudaRng{};  // the table kernel wrote the state
  }
  const int64_t total = kForward ? p.output_numel() : p.input_numel();
  if (!kForward && total == 0) return;
  const bool channel_fastest = p.in_strides.c < p.in_strides.w;  // channels_last
  const bool narrow = total < std::numeric_limits<int32_t>::max() - 65536 * kThreads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "fractional_max_pool2d_cuda", [&] {
    if (narrow) {
      channel_fastest ? launch_main<kForward, scalar_t, uint32_t, true>(p, rng, draw, total, stream)
                      : launch_main<kForward, scalar_t, uint32_t, false>(p, rng, draw, total, stream);
    } else {
      channel_fastest ? launch_main<kForward, scalar_t, int64_t, true>(p, rng, draw, total, stream)
                      : launch_main<kForward, scalar_t, int64_t, false>(p, rng, draw, total, stream);
    }
  });
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
