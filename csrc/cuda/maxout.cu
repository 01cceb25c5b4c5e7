// Maxout and probabilistic maxout on CUDA: one thread per output element in forward, one per input element
// in backward (math in maxout.h). Consecutive threads take consecutive addresses: along the inner dims in
// NCHW, along the channels in channels_last (kChannelFastest).
// No torch headers: compiled by plain nvcc in CI, launched from maxout_bind.cpp.
#include "cifarops/cuda_convert.cuh"
#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/cuda_launchers.h"
#include "cifarops/maxout.h"

namespace cifarops {
namespace {

// Splits a linear thread index into (o, c, i) of an (outer, channels, inner) grid.
template <bool kChannelFastest>
__device__ __forceinline__ void split(int64_t t, int64_t channels, int64_t inner, int64_t& o, int64_t& c,
                                      int64_t& i) {
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

template <typename scalar_t, bool kChannelFastest>
__global__ void __launch_bounds__(kElementwiseThreads) maxout_forward_kernel(const MaxoutParams p) {
  const int64_t total = p.output_numel();
  const int64_t step = static_cast<int64_t>(gridDim.x) * kElementwiseThreads;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x; t < total; t += step) {
    int64_t o, j, i;
    split<kChannelFastest>(t, p.groups(), p.inner, o, j, i);
    maxout_forward_element<scalar_t>(p, o, j, i);
  }
}

template <typename scalar_t, bool kChannelFastest>
__global__ void __launch_bounds__(kElementwiseThreads) maxout_backward_kernel(const MaxoutParams p) {
  const int64_t total = p.input_numel();
  const int64_t step = static_cast<int64_t>(gridDim.x) * kElementwiseThreads;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x; t < total; t += step) {
    int64_t o, c, i;
    split<kChannelFastest>(t, p.channels, p.inner, o, c, i);
    if (p.mode == MaxoutMode::Expectation) {
      maxout_expectation_backward_element<scalar_t>(p, o, c, i);
    } else {
      maxout_backward_element<scalar_t>(p, o, c, i);
    }
  }
}

template <bool kForward>
cudaError_t launch(const MaxoutParams& p, cudaStream_t stream) {
  const int64_t total = kForward ? p.output_numel() : p.input_numel();
  if (total == 0) return cudaSuccess;
  const bool channel_fastest = p.in_strides.channel < p.in_strides.inner;  // channels_last
  const unsigned grid = elementwise_blocks(total);
  return dispatch_floating(p.dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    if (kForward) {
      if (channel_fastest) {
        maxout_forward_kernel<scalar_t, true><<<grid, kElementwiseThreads, 0, stream>>>(p);
      } else {
        maxout_forward_kernel<scalar_t, false><<<grid, kElementwiseThreads, 0, stream>>>(p);
      }
    } else if (channel_fastest) {
      maxout_backward_kernel<scalar_t, true><<<grid, kElementwiseThreads, 0, stream>>>(p);
    } else {
      maxout_backward_kernel<scalar_t, false><<<grid, kElementwiseThreads, 0, stream>>>(p);
    }
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t launch_maxout_forward(const MaxoutParams& p, cudaStream_t stream) { return launch<true>(p, stream); }

cudaError_t launch_maxout_backward(const MaxoutParams& p, cudaStream_t stream) { return launch<false>(p, stream); }

}  // namespace cifarops
