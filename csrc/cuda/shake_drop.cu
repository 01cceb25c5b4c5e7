// ShakeDrop on CUDA: one memory-bound pass, out = shortcut + scale * h (math in shake_drop.h).
// No torch headers: compiled by plain nvcc in CI, launched from shake_drop_bind.cpp.
#include "cifarops/cuda_convert.cuh"
#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/cuda_launchers.h"
#include "cifarops/shake_drop.h"

namespace cifarops {
namespace {

// Each thread handles kVec consecutive elements of one row (row = the HW plane in NCHW, the C vector in
// channels_last), loaded and stored as one 16-byte packet. All kVec share n, and the row's coordinates
// advance by one along s (NCHW) or c (channels_last), so the divisions of locate() happen once per packet.
template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kElementwiseThreads) shake_drop_kernel(const ShakeDropParams p) {
  using acc_t = typename OpMath<scalar_t>::type;
  const int64_t packets = p.numel() / kVec;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kElementwiseThreads;
  const auto* h = static_cast<const Packet<scalar_t, kVec>*>(p.h);
  auto* out = static_cast<Packet<scalar_t, kVec>*>(p.out);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x; i < packets; i += step) {
    const int64_t m0 = i * kVec;
    const Position q0 = locate(p, m0);
    const acc_t gate = static_cast<const acc_t*>(p.gate)[q0.n * p.gate_stride];
    const Packet<scalar_t, kVec> hv = h[i];
    Packet<scalar_t, kVec> xv;
    // The row alignment check in the launcher guarantees a packet is wholly inside or outside the shortcut.
    const bool has_shortcut = p.shortcut != nullptr && q0.c < p.shortcut_channels;
    if (has_shortcut) {
      xv = *reinterpret_cast<const Packet<scalar_t, kVec>*>(static_cast<const scalar_t*>(p.shortcut) +
                                                            shortcut_offset(p, q0));
    }
    Packet<scalar_t, kVec> yv;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const Position q{q0.n, p.channels_last ? q0.c + j : q0.c, p.channels_last ? q0.s : q0.s + j};
      const acc_t scale = shake_drop_scale(gate, shake_drop_coefficient<acc_t>(p, q, m0 + j));
      acc_t y = scale * to_acc<acc_t>(hv.v[j]);
      if (has_shortcut) y += to_acc<acc_t>(xv.v[j]);
      yv.v[j] = from_acc<scalar_t>(y);
    }
    out[i] = yv;
  }
}

template <typename scalar_t>
cudaError_t launch_typed(const ShakeDropParams& p, cudaStream_t stream) {
  constexpr int kVec = packet_size<scalar_t>();
  const int64_t row = p.channels_last ? p.channels : p.spatial;
  const int64_t shortcut_row = p.channels_last ? p.shortcut_channels : p.spatial;
  const bool vectorize = row % kVec == 0 && shortcut_row % kVec == 0 && aligned16(p.h) &&
                         aligned16(p.out) && (p.shortcut == nullptr || aligned16(p.shortcut));
  const unsigned grid = elementwise_blocks(p.numel() / (vectorize ? kVec : 1));
  // Indices are 64-bit throughout: correct past 2^31 elements; the divisions happen once per packet.
  if (vectorize) {
    shake_drop_kernel<scalar_t, kVec><<<grid, kElementwiseThreads, 0, stream>>>(p);
  } else {
    shake_drop_kernel<scalar_t, 1><<<grid, kElementwiseThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_shake_drop(const ShakeDropParams& p, cudaStream_t stream) {
  if (p.numel() == 0) return cudaSuccess;
  return dispatch_floating(p.dtype, [&](auto tag) { return launch_typed<typename decltype(tag)::type>(p, stream); });
}

}  // namespace cifarops
