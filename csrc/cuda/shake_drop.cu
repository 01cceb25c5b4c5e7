// ShakeDrop on CUDA: one memory-bound pass, out = shortcut + scale * h (math in shake_drop.h), with the
// noise drawn in the kernel from the CUDA generator's Philox state (graph-safe, as native dropout).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
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

// Each thread handles kVec consecutive elements of one row (row = the HW plane in NCHW, the C vector in
// channels_last), loaded and stored as one 16-byte packet. All kVec share n, and the row's coordinates
// advance by one along s (NCHW) or c (channels_last), so locate()'s divisions happen once per packet, in
// 32-bit arithmetic when the tensor has fewer than 2^31 elements (index_t).
template <typename scalar_t, int kVec, typename index_t>
__global__ void __launch_bounds__(kElementwiseThreads) shake_drop_kernel(ShakeDropParams p, CudaRng rng) {
  using acc_t = at::opmath_type<scalar_t>;
  p.rng = resolve_rng(rng);
  const index_t packets = static_cast<index_t>(p.numel() / kVec);
  const index_t step = static_cast<index_t>(gridDim.x) * kElementwiseThreads;
  const auto* h = static_cast<const Packet<scalar_t, kVec>*>(p.h);
  auto* out = static_cast<Packet<scalar_t, kVec>*>(p.out);
  const bool pixel_philox = p.coef.kind == Noise::Drawn && p.coef.level == Level::Pixel;
  for (index_t i = static_cast<index_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x; i < packets; i += step) {
    const index_t m0 = i * kVec;
    const Position q0 = locate<index_t>(p, m0);
    const acc_t gate = shake_drop_gate<acc_t>(p, q0.n);
    const Packet<scalar_t, kVec> hv = h[i];
    Packet<scalar_t, kVec> xv;
    // The row alignment check in the launcher guarantees a packet is wholly inside or outside the shortcut.
    const bool has_shortcut = p.shortcut != nullptr && q0.c < p.shortcut_channels;
    if (has_shortcut) {
      xv = *reinterpret_cast<const Packet<scalar_t, kVec>*>(static_cast<const scalar_t*>(p.shortcut) +
                                                            shortcut_offset(p, q0));
    }
    // Per-packet scale for every level but pixel (the packet shares n and, in NCHW, c).
    acc_t scale = p.pixel_noise() || p.channels_last ? acc_t(0) : shake_drop_scale(gate, shake_drop_coefficient<acc_t>(p, q0, m0));
    Philox4 quad{};
    Packet<scalar_t, kVec> yv;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const Position q{q0.n, p.channels_last ? q0.c + j : q0.c, p.channels_last ? q0.s : q0.s + j};
      if (pixel_philox && !p.channels_last) {
        // Consecutive logical indices: one Philox call per four elements.
        const uint64_t index = static_cast<uint64_t>(logical_index(p, q));
        if (j == 0 || index % 4 == 0) quad = philox_quad(p.rng, index / 4, p.coef.stream);
        scale = shake_drop_scale(gate, coefficient_from_uniform<acc_t>(p.coef, philox_bits_to_uniform(quad.v[index % 4])));
      } else if (p.pixel_noise() || p.channels_last) {
        scale = shake_drop_scale(gate, shake_drop_coefficient<acc_t>(p, q, m0 + j));
      }
      acc_t y = scale * static_cast<acc_t>(hv.v[j]);
      if (has_shortcut) y += static_cast<acc_t>(xv.v[j]);
      yv.v[j] = static_cast<scalar_t>(y);
    }
    out[i] = yv;
  }
}

template <typename scalar_t>
void launch_typed(const ShakeDropParams& p, const CudaRng& rng, cudaStream_t stream) {
  constexpr int kVec = packet_size<scalar_t>();
  const int64_t row = p.channels_last ? p.channels : p.spatial;
  const int64_t shortcut_row = p.channels_last ? p.shortcut_channels : p.spatial;
  const bool vectorize = row % kVec == 0 && shortcut_row % kVec == 0 && aligned16(p.h) &&
                         aligned16(p.out) && (p.shortcut == nullptr || aligned16(p.shortcut));
  // At least one block, also for an empty tensor: it writes the RNG state.
  const unsigned grid = elementwise_blocks(p.numel() / (vectorize ? kVec : 1));
  const bool small = p.numel() < (int64_t(1) << 31) - kElementwiseThreads * 65536LL * kVec;
  if (vectorize && small) {
    shake_drop_kernel<scalar_t, kVec, int32_t><<<grid, kElementwiseThreads, 0, stream>>>(p, rng);
  } else if (vectorize) {
    shake_drop_kernel<scalar_t, kVec, int64_t><<<grid, kElementwiseThreads, 0, stream>>>(p, rng);
  } else if (small) {
    shake_drop_kernel<scalar_t, 1, int32_t><<<grid, kElementwiseThreads, 0, stream>>>(p, rng);
  } else {
    shake_drop_kernel<scalar_t, 1, int64_t><<<grid, kElementwiseThreads, 0, stream>>>(p, rng);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The state comes from the generator (forward, nothing explicit), an explicit tensor, or none is needed. The
// kernel writes the state output only when this call allocated it (forward), never into a backward's input.
void run(ShakeDropCall& call, const at::Tensor& ref) {
  const bool explicit_state = call.state_in.has_value();
  const at::Tensor state_in = explicit_state ? call.state_in->contiguous() : at::Tensor();
  const bool writes_state = !call.state.defined();
  if (writes_state) call.state = empty_state(ref);
  const CudaRng rng = cuda_rng(ref.device(), call.draws && !explicit_state ? kShakeDropStreams : 0,
                               explicit_state ? state_in.data_ptr<int64_t>() : nullptr,
                               writes_state ? call.state.data_ptr<int64_t>() : nullptr);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.out.scalar_type(), "shake_drop_cuda", [&] {
    launch_typed<scalar_t>(call.params, rng, at::cuda::getCurrentCUDAStream());
  });
}

std::tuple<at::Tensor, at::Tensor> shake_drop_cuda(
    const at::Tensor& h, const std::optional<at::Tensor>& shortcut, double p_drop, at::ArrayRef<double> alpha_range,
    at::ArrayRef<double> beta_range, c10::string_view gate_level, c10::string_view level, bool training,
    const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& alpha,
    const std::optional<at::Tensor>& beta, const std::optional<at::Tensor>& rng_state) {
  const c10::cuda::CUDAGuard guard(h.device());  // allocations and the generator: h's device
  ShakeDropCall call = shake_drop_forward_call(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level,
                                               training, gate, alpha, beta, rng_state);
  run(call, h);
  return {call.out, call.state};
}

at::Tensor shake_drop_backward_cuda(const at::Tensor& grad_y, const at::Tensor& rng_state, double p_drop,
                                    at::ArrayRef<double> alpha_range, at::ArrayRef<double> beta_range,
                                    c10::string_view gate_level, c10::string_view level, bool training,
                                    const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& beta) {
  const c10::cuda::CUDAGuard guard(grad_y.device());
  ShakeDropCall call = shake_drop_backward_call(grad_y, rng_state, p_drop, alpha_range, beta_range, gate_level,
                                                level, training, gate, beta);
  run(call, grad_y);
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CUDA, m) {
  m.impl("shake_drop", &shake_drop_cuda);
  m.impl("_shake_drop_backward", &shake_drop_backward_cuda);
}

}  // namespace cifarops
