// Shake-Shake on CUDA: one memory-bound pass each way (math in cifarops/shake_shake.h). Forward reads h1, h2
// and the shortcut once and writes y; backward reads grad_y once and writes both branch gradients. alpha and
// beta are drawn in the kernel from the CUDA generator's Philox state (graph-safe, as native dropout), or
// from the explicit state the backward op and checkpoint replays pass (philox_state.cuh).
//
// Grid: blockIdx.y walks the samples (one coefficient per block and sample, no per-element division),
// blockIdx.x the packets of one sample, with 32-bit indices unless a sample has 2^31 packets or more.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "args/shake_shake.h"
#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/shake_shake.h"
#include "philox_state.cuh"

namespace cifarops {
namespace {

template <typename scalar_t, int kVec>
using Vec = Packet<scalar_t, kVec>;

// A packet never straddles two samples (the launcher checks sample_size % kVec == 0), so it has one alpha.
template <typename scalar_t, int kVec, typename index_t>
__global__ void __launch_bounds__(kElementwiseThreads)
    shake_shake_forward_kernel(const ShakeShakeParams p, const CudaRng rng) {
  using acc_t = at::opmath_type<scalar_t>;
  const PhiloxState s = resolve_rng(rng);  // block 0 thread 0 also writes the state out
  const index_t packets = static_cast<index_t>(p.sample_size / kVec);
  const index_t step = static_cast<index_t>(gridDim.x) * kElementwiseThreads;
  for (int64_t n = blockIdx.y; n < p.batch; n += gridDim.y) {
    const acc_t alpha = p.coef.value<acc_t>(s, n);
    const int64_t base = n * p.sample_size;
    const auto* h1 = reinterpret_cast<const Vec<scalar_t, kVec>*>(static_cast<const scalar_t*>(p.a) + base);
    const auto* h2 = reinterpret_cast<const Vec<scalar_t, kVec>*>(static_cast<const scalar_t*>(p.b) + base);
    const auto* x = p.c == nullptr ? nullptr
                                   : reinterpret_cast<const Vec<scalar_t, kVec>*>(static_cast<const scalar_t*>(p.c) + base);
    auto* y = reinterpret_cast<Vec<scalar_t, kVec>*>(static_cast<scalar_t*>(p.out0) + base);
    for (index_t i = static_cast<index_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x; i < packets; i += step) {
      const Vec<scalar_t, kVec> a = h1[i];
      const Vec<scalar_t, kVec> b = h2[i];
      Vec<scalar_t, kVec> c;
      if (x != nullptr) c = x[i];
      Vec<scalar_t, kVec> out;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        acc_t v = shake_shake_mix(alpha, static_cast<acc_t>(a.v[j]), static_cast<acc_t>(b.v[j]));
        if (x != nullptr) v += static_cast<acc_t>(c.v[j]);
        out.v[j] = static_cast<scalar_t>(v);
      }
      y[i] = out;
    }
  }
}

template <typename scalar_t, int kVec, typename index_t>
__global__ void __launch_bounds__(kElementwiseThreads)
    shake_shake_backward_kernel(const ShakeShakeParams p, const CudaRng rng) {
  using acc_t = at::opmath_type<scalar_t>;
  const PhiloxState s = resolve_rng(rng);
  const index_t packets = static_cast<index_t>(p.sample_size / kVec);
  const index_t step = static_cast<index_t>(gridDim.x) * kElementwiseThreads;
  for (int64_t n = blockIdx.y; n < p.batch; n += gridDim.y) {
    const acc_t beta = p.coef.value<acc_t>(s, n);
    const int64_t base = n * p.sample_size;
    const auto* g = reinterpret_cast<const Vec<scalar_t, kVec>*>(static_cast<const scalar_t*>(p.a) + base);
    auto* g1 = reinterpret_cast<Vec<scalar_t, kVec>*>(static_cast<scalar_t*>(p.out0) + base);
    auto* g2 = reinterpret_cast<Vec<scalar_t, kVec>*>(static_cast<scalar_t*>(p.out1) + base);
    for (index_t i = static_cast<index_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x; i < packets; i += step) {
      const Vec<scalar_t, kVec> v = g[i];
      Vec<scalar_t, kVec> o1, o2;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const acc_t e = static_cast<acc_t>(v.v[j]);
        o1.v[j] = static_cast<scalar_t>(beta * e);
        o2.v[j] = static_cast<scalar_t>((acc_t(1) - beta) * e);
      }
      g1[i] = o1;
      g2[i] = o2;
    }
  }
}

bool can_vectorize(const ShakeShakeParams& p, int vec) {
  return p.sample_size % vec == 0 && aligned16(p.a) && aligned16(p.out0) && (p.b == nullptr || aligned16(p.b)) &&
         (p.c == nullptr || aligned16(p.c)) && (p.out1 == nullptr || aligned16(p.out1));
}

// Always at least one block, also for an empty batch: block 0 writes the state.
template <bool kForward>
void launch(const ShakeShakeParams& p, const CudaRng& rng, at::ScalarType dtype) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "shake_shake_cuda", [&] {
    constexpr int kVec = packet_size<scalar_t>();
    const bool vectorize = can_vectorize(p, kVec);
    const int64_t packets = p.sample_size / (vectorize ? kVec : 1);
    const dim3 grid(elementwise_blocks(packets), static_cast<unsigned>(std::clamp<int64_t>(p.batch, 1, 65535)));
    const bool narrow = packets < (int64_t(1) << 31) - 2 * int64_t(65536) * kElementwiseThreads;
    auto go = [&](auto vec_tag, auto index_tag) {
      constexpr int V = decltype(vec_tag)::value;
      using index_t = decltype(index_tag);
      if constexpr (kForward) {
        shake_shake_forward_kernel<scalar_t, V, index_t><<<grid, kElementwiseThreads, 0, stream>>>(p, rng);
      } else {
        shake_shake_backward_kernel<scalar_t, V, index_t><<<grid, kElementwiseThreads, 0, stream>>>(p, rng);
      }
    };
    if (vectorize && narrow) {
      go(std::integral_constant<int, kVec>{}, int32_t{});
    } else if (vectorize) {
      go(std::integral_constant<int, kVec>{}, int64_t{});
    } else if (narrow) {
      go(std::integral_constant<int, 1>{}, int32_t{});
    } else {
      go(std::integral_constant<int, 1>{}, int64_t{});
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> shake_shake_cuda(const at::Tensor& h1, const at::Tensor& h2,
                                                    const std::optional<at::Tensor>& shortcut,
                                                    c10::string_view forward_mode, c10::string_view backward_mode,
                                                    c10::string_view level, bool training,
                                                    const std::optional<at::Tensor>& alpha,
                                                    const std::optional<at::Tensor>& beta,
                                                    const std::optional<at::Tensor>& rng_state) {
  const c10::cuda::CUDAGuard guard(h1.device());
  ShakeShakeCall call =
      shake_shake_forward_call(h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, rng_state);
  // Everything is checked: only now is the generator's offset reserved (2 streams, when the call draws).
  const int64_t* explicit_state = nullptr;
  if (call.draws && rng_state.has_value()) {
    call.keep_alive.push_back(rng_state->contiguous());
    explicit_state = call.keep_alive.back().data_ptr<int64_t>();
  }
  const CudaRng rng = cuda_rng(h1.device(), call.draws ? kShakeShakeStreams : 0, explicit_state,
                               call.state.data_ptr<int64_t>());
  launch<true>(call.params, rng, h1.scalar_type());
  return {call.out0, call.state};
}

std::tuple<at::Tensor, at::Tensor> shake_shake_backward_cuda(const at::Tensor& grad_y, const at::Tensor& rng_state,
                                                             const std::optional<at::Tensor>& beta,
                                                             c10::string_view backward_mode, c10::string_view level) {
  const c10::cuda::CUDAGuard guard(grad_y.device());
  ShakeShakeCall call = shake_shake_backward_call(grad_y, rng_state, beta, backward_mode, level);
  const int64_t* explicit_state = nullptr;
  if (call.draws) {
    call.keep_alive.push_back(rng_state.contiguous());
    explicit_state = call.keep_alive.back().data_ptr<int64_t>();
  }
  const CudaRng rng = cuda_rng(grad_y.device(), 0, explicit_state, nullptr);
  launch<false>(call.params, rng, grad_y.scalar_type());
  return {call.out0, call.out1};
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CUDA, m) {
  m.impl("shake_shake", &shake_shake_cuda);
  m.impl("_shake_shake_backward", &shake_shake_backward_cuda);
}

}  // namespace cifarops
