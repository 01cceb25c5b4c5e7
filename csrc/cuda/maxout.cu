// Maxout and probabilistic maxout on CUDA: kernels, launchers and the CUDA registrations (math in
// cifarops/maxout.h, checks and allocation in args/maxout.cpp). One thread per output element in forward
// (four consecutive ones for the probabilistic draw, which shares one Philox call), one per input element in
// backward. Consecutive threads take consecutive addresses: along the inner dims in NCHW, along the channels
// in channels_last (kChannelFastest). Index math is 32-bit below 2^31 elements, 64-bit above.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "args/maxout.h"
#include "args/rng.h"
#include "cifarops/maxout.h"
#include "cuda/philox_state.cuh"

namespace cifarops {
namespace {

constexpr int kThreads = 256;

// Blocks for `items` work items, at least one (a drawing kernel writes its state even for no elements),
// capped: the kernels grid-stride over the rest.
unsigned blocks_for(int64_t items) {
  const int64_t blocks = (items + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

// Splits a linear thread index into (o, c, i) of an (outer, channels, inner) grid.
template <typename index_t, bool kChannelFastest>
__device__ __forceinline__ void split(index_t t, index_t channels, index_t inner, index_t& o, index_t& c, index_t& i) {
  if (kChannelFastest) {
    c = t % channels;
    t /= channels;
    i = t % inner;
    o = t / inner;
  } else {
    i = t % inner;
    t /= inner;
    c = t % channels;
    o = t / channels;
  }
}

// kQuad (Sample in NCHW order, where the thread order is the draw's logical order): each thread takes the
// four outputs 4q .. 4q + 3 and one philox_quad. Otherwise one output per thread, and for Sample one
// philox_uniform of the output's logical index.
// The minimum of one block per SM stated: with __launch_bounds__(kThreads) alone, ptxas (CUDA 13.0) spilled the
// probabilistic (64-bit index) and float64 forwards on sm_80 (scripts/kernel_report.py --arch 80).
template <typename scalar_t, typename index_t, bool kChannelFastest, bool kQuad>
__global__ void __launch_bounds__(kThreads, 1) maxout_forward_kernel(const MaxoutParams p, const CudaRng rng) {
  const bool draws = p.mode == MaxoutMode::Sample;
  PhiloxState state;
  if (draws) state = resolve_rng(rng);  // block 0 thread 0 writes the state used
  const index_t total = static_cast<index_t>(p.output_numel());
  const index_t groups = static_cast<index_t>(p.groups()), inner = static_cast<index_t>(p.inner);
  const index_t step = static_cast<index_t>(gridDim.x) * kThreads;
  const index_t first = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  if constexpr (kQuad) {
    const index_t quads = total / 4 + (total % 4 != 0);
    for (index_t q = first; q < quads; q += step) {
      const Philox4 words = philox_quad(state, static_cast<uint64_t>(q), 0);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const index_t t = q * 4 + k;
        if (t >= total) break;
        index_t o, j, i;
        split<index_t, false>(t, groups, inner, o, j, i);
        maxout_forward_element<scalar_t>(p, o, j, i, philox_bits_to_uniform(words.v[k]));
      }
    }
  } else {
    for (index_t t = first; t < total; t += step) {
      index_t o, j, i;
      split<index_t, kChannelFastest>(t, groups, inner, o, j, i);
      const float u = draws ? philox_uniform(state, static_cast<uint64_t>(maxout_draw_index(p, o, j, i)), 0) : 0.0f;
      maxout_forward_element<scalar_t>(p, o, j, i, u);
    }
  }
}

template <typename scalar_t, typename index_t, bool kChannelFastest>
__global__ void __launch_bounds__(kThreads) maxout_backward_kernel(const MaxoutParams p) {
  const index_t total = static_cast<index_t>(p.input_numel());
  const index_t channels = static_cast<index_t>(p.channels), inner = static_cast<index_t>(p.inner);
  const index_t groups = static_cast<index_t>(p.groups()), pieces = static_cast<index_t>(p.pieces);
  const index_t step = static_cast<index_t>(gridDim.x) * kThreads;
  for (index_t t = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; t < total; t += step) {
    index_t o, c, i;
    split<index_t, kChannelFastest>(t, channels, inner, o, c, i);
    const index_t j = p.strided_grouping ? c % groups : c / pieces;
    if (p.mode == MaxoutMode::Expectation) {
      maxout_expectation_backward_element<scalar_t>(p, o, c, i, j);
    } else {
      const index_t piece = p.strided_grouping ? c / groups : c % pieces;
      maxout_backward_element<scalar_t>(p, o, c, i, j, piece);
    }
  }
}

// 32-bit index math when every element index fits (the grid-stride step stays below 2^24, so t + step fits
// in uint32 too), else 64-bit.
bool fits_32(int64_t total) { return total < (int64_t(1) << 31); }

void launch_forward(const MaxoutParams& p, const CudaRng& rng, at::ScalarType type) {
  const int64_t total = p.output_numel();
  const bool draws = p.mode == MaxoutMode::Sample;
  if (total == 0 && !draws) return;
  const bool channel_fastest = total > 0 && p.in_strides.channel < p.in_strides.inner;  // channels_last
  const bool quad = draws && !channel_fastest;
  const unsigned grid = blocks_for(quad ? (total + 3) / 4 : total);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "maxout_forward_cuda", [&] {
    const auto run = [&](auto index_tag) {
      using index_t = decltype(index_tag);
      if (quad) {
        maxout_forward_kernel<scalar_t, index_t, false, true><<<grid, kThreads, 0, stream>>>(p, rng);
      } else if (channel_fastest) {
        maxout_forward_kernel<scalar_t, index_t, true, false><<<grid, kThreads, 0, stream>>>(p, rng);
      } else {
        maxout_forward_kernel<scalar_t, index_t, false, false><<<grid, kThreads, 0, stream>>>(p, rng);
      }
    };
    if (fits_32(total)) {
      run(uint32_t{});
    } else {
      run(int64_t{});
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_backward(const MaxoutParams& p, at::ScalarType type) {
  const int64_t total = p.input_numel();
  if (total == 0) return;
  const bool channel_fastest = p.in_strides.channel < p.in_strides.inner;
  const unsigned grid = blocks_for(total);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "maxout_backward_cuda", [&] {
    const auto run = [&](auto index_tag) {
      using index_t = decltype(index_tag);
      if (channel_fastest) {
        maxout_backward_kernel<scalar_t, index_t, true><<<grid, kThreads, 0, stream>>>(p);
      } else {
        maxout_backward_kernel<scalar_t, index_t, false><<<grid, kThreads, 0, stream>>>(p);
      }
    };
    if (fits_32(total)) {
      run(uint32_t{});
    } else {
      run(int64_t{});
    }
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
