// Shake-Shake on CUDA: one memory-bound pass each way (math in shake_shake.h). Forward reads h1, h2 and
// the shortcut once and writes y; backward reads grad_y once and writes both branch gradients.
// No torch headers: compiled by plain nvcc in CI, launched from shake_shake_bind.cpp.
#include "cifarops/cuda_convert.cuh"
#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/cuda_launchers.h"
#include "cifarops/shake_shake.h"

namespace cifarops {
namespace {

template <typename scalar_t, int kVec>
using Vec = Packet<scalar_t, kVec>;

// A packet never straddles two samples (the launcher checks sample_size % kVec == 0), so it has one alpha.
template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kElementwiseThreads) shake_shake_forward_kernel(const ShakeShakeParams p) {
  using acc_t = typename OpMath<scalar_t>::type;
  const int64_t packets = p.numel() / kVec;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kElementwiseThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x; i < packets; i += step) {
    const acc_t alpha = static_cast<const acc_t*>(p.coef)[(i * kVec / p.sample_size) * p.coef_stride];
    const Vec<scalar_t, kVec> h1 = static_cast<const Vec<scalar_t, kVec>*>(p.a)[i];
    const Vec<scalar_t, kVec> h2 = static_cast<const Vec<scalar_t, kVec>*>(p.b)[i];
    Vec<scalar_t, kVec> x;
    if (p.c != nullptr) x = static_cast<const Vec<scalar_t, kVec>*>(p.c)[i];
    Vec<scalar_t, kVec> y;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      acc_t v = shake_shake_mix(alpha, to_acc<acc_t>(h1.v[j]), to_acc<acc_t>(h2.v[j]));
      if (p.c != nullptr) v += to_acc<acc_t>(x.v[j]);
      y.v[j] = from_acc<scalar_t>(v);
    }
    static_cast<Vec<scalar_t, kVec>*>(p.out0)[i] = y;
  }
}

template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kElementwiseThreads) shake_shake_backward_kernel(const ShakeShakeParams p) {
  using acc_t = typename OpMath<scalar_t>::type;
  const int64_t packets = p.numel() / kVec;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kElementwiseThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x; i < packets; i += step) {
    const acc_t beta = static_cast<const acc_t*>(p.coef)[(i * kVec / p.sample_size) * p.coef_stride];
    const Vec<scalar_t, kVec> g = static_cast<const Vec<scalar_t, kVec>*>(p.a)[i];
    Vec<scalar_t, kVec> g1, g2;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const acc_t v = to_acc<acc_t>(g.v[j]);
      g1.v[j] = from_acc<scalar_t>(beta * v);
      g2.v[j] = from_acc<scalar_t>((acc_t(1) - beta) * v);
    }
    static_cast<Vec<scalar_t, kVec>*>(p.out0)[i] = g1;
    static_cast<Vec<scalar_t, kVec>*>(p.out1)[i] = g2;
  }
}

bool can_vectorize(const ShakeShakeParams& p, int vec) {
  return p.sample_size % vec == 0 && aligned16(p.a) && aligned16(p.out0) && (p.b == nullptr || aligned16(p.b)) &&
         (p.c == nullptr || aligned16(p.c)) && (p.out1 == nullptr || aligned16(p.out1));
}

template <bool kForward>
cudaError_t launch(const ShakeShakeParams& p, cudaStream_t stream) {
  if (p.numel() == 0) return cudaSuccess;
  return dispatch_floating(p.dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    constexpr int kVec = packet_size<scalar_t>();
    const bool vectorize = can_vectorize(p, kVec);
    const unsigned grid = elementwise_blocks(p.numel() / (vectorize ? kVec : 1));
    if (kForward && vectorize) {
      shake_shake_forward_kernel<scalar_t, kVec><<<grid, kElementwiseThreads, 0, stream>>>(p);
    } else if (kForward) {
      shake_shake_forward_kernel<scalar_t, 1><<<grid, kElementwiseThreads, 0, stream>>>(p);
    } else if (vectorize) {
      shake_shake_backward_kernel<scalar_t, kVec><<<grid, kElementwiseThreads, 0, stream>>>(p);
    } else {
      shake_shake_backward_kernel<scalar_t, 1><<<grid, kElementwiseThreads, 0, stream>>>(p);
    }
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t launch_shake_shake_forward(const ShakeShakeParams& p, cudaStream_t stream) {
  return launch<true>(p, stream);
}

cudaError_t launch_shake_shake_backward(const ShakeShakeParams& p, cudaStream_t stream) {
  return launch<false>(p, stream);
}

}  // namespace cifarops
