// Fractional max-pooling on CUDA: one thread per output in forward, one per input in backward, which
// gathers from the few outputs whose regions contain it (math in fractional_max_pool2d.h): no zero-fill, no
// atomics, deterministic. Interval arithmetic runs in the compute type, as ATen's CUDA kernel does.
// Consecutive threads take consecutive addresses: along the width in NCHW, along the channels in
// channels_last (kChannelFastest). No torch headers: compiled by plain nvcc in CI.
#include "cifarops/cuda_convert.cuh"
#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/cuda_launchers.h"
#include "cifarops/fractional_max_pool2d.h"

namespace cifarops {
namespace {

// Splits a linear thread index into (n, c, h, w) of an (N, C, height, width) grid.
template <bool kChannelFastest>
__device__ __forceinline__ void split(int64_t t, int64_t channels, int64_t height, int64_t width, int64_t& n,
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

template <typename scalar_t, bool kChannelFastest>
__global__ void __launch_bounds__(kElementwiseThreads) fmp_forward_kernel(const FmpParams p) {
  using acc_t = typename OpMath<scalar_t>::type;
  const int64_t total = p.output_numel();
  const int64_t step = static_cast<int64_t>(gridDim.x) * kElementwiseThreads;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x; t < total; t += step) {
    int64_t n, c, oh, ow;
    split<kChannelFastest>(t, p.channels, p.rows.out, p.cols.out, n, c, oh, ow);
    fmp_forward_element<scalar_t, acc_t>(p, n, c, oh, ow);
  }
}

template <typename scalar_t, bool kChannelFastest>
__global__ void __launch_bounds__(kElementwiseThreads) fmp_backward_kernel(const FmpParams p) {
  using acc_t = typename OpMath<scalar_t>::type;
  const int64_t total = p.input_numel();
  const int64_t step = static_cast<int64_t>(gridDim.x) * kElementwiseThreads;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x; t < total; t += step) {
    int64_t n, c, h, w;
    split<kChannelFastest>(t, p.channels, p.rows.in, p.cols.in, n, c, h, w);
    fmp_backward_element<scalar_t, acc_t>(p, n, c, h, w);
  }
}

template <bool kForward>
cudaError_t launch(const FmpParams& p, cudaStream_t stream) {
  const int64_t total = kForward ? p.output_numel() : p.input_numel();
  if (total == 0) return cudaSuccess;
  const bool channel_fastest = p.in_strides.c < p.in_strides.w;  // channels_last
  const unsigned grid = elementwise_blocks(total);
  return dispatch_floating(p.dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    if (kForward) {
      if (channel_fastest) {
        fmp_forward_kernel<scalar_t, true><<<grid, kElementwiseThreads, 0, stream>>>(p);
      } else {
        fmp_forward_kernel<scalar_t, false><<<grid, kElementwiseThreads, 0, stream>>>(p);
      }
    } else if (channel_fastest) {
      fmp_backward_kernel<scalar_t, true><<<grid, kElementwiseThreads, 0, stream>>>(p);
    } else {
      fmp_backward_kernel<scalar_t, false><<<grid, kElementwiseThreads, 0, stream>>>(p);
    }
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t launch_fractional_max_pool2d_forward(const FmpParams& p, cudaStream_t stream) {
  return launch<true>(p, stream);
}

cudaError_t launch_fractional_max_pool2d_backward(const FmpParams& p, cudaStream_t stream) {
  return launch<false>(p, stream);
}

}  // namespace cifarops
