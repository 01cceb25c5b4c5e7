// Shake-Shake's shared math (SPEC.md): forward y = shortcut + alpha * h1 + (1 - alpha) * h2, backward
// grad_h1 = beta * grad_y, grad_h2 = (1 - beta) * grad_y, with one alpha and one beta per sample (level
// "sample") or per batch (level "batch").
//
// The coefficients are drawn inside the kernels (cifarops/philox.h): alpha = u(i, stream 0), beta =
// u(i, stream 1), with i = n (the sample) at level "sample" and i = 0 at level "batch"; or they are
// constants (0.5: "even" and evaluation), or explicit tensors in the compute type.
//
// Torch-free: included by csrc/cpu/shake_shake.cpp and csrc/cuda/shake_shake.cu. The CUDA kernels' bodies and
// launch geometry live here too (shake_shake_*_thread, shake_shake_launch), so that cpp_tests/kernel_grid_*.cpp
// runs every thread of their launch grids on the host.
#pragma once

#include <stdint.h>

#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/macros.h"
#include "cifarops/philox.h"
#include "cifarops/tensor_types.h"

namespace cifarops {

constexpr uint32_t kShakeShakeStreams = 2;  // stream 0: alpha, stream 1: beta
constexpr uint32_t kShakeShakeAlphaStream = 0;
constexpr uint32_t kShakeShakeBetaStream = 1;

// Where one coefficient comes from: explicit values (data[n * stride], in the compute type; stride 0 for
// one value), else a draw of `stream` (stream >= 0), else `constant`.
struct ShakeShakeCoef {
  const void* data = nullptr;
  int64_t stride = 0;
  int32_t stream = -1;
  bool per_sample = true;  // drawn: index n (level "sample") or 0 (level "batch")
  float constant = 0.5f;

  CIFAROPS_INLINE bool draws() const { return data == nullptr && stream >= 0; }

  template <typename acc_t>
  CIFAROPS_INLINE acc_t value(PhiloxState s, int64_t n) const {
    if (data != nullptr) return static_cast<const acc_t*>(data)[n * stride];
    if (stream >= 0) {
      return static_cast<acc_t>(philox_uniform(s, per_sample ? static_cast<uint64_t>(n) : 0u, static_cast<uint32_t>(stream)));
    }
    return static_cast<acc_t>(constant);
  }
};

// Tensors are dense in one memory format. Sample n occupies memory elements [n * sample_size, (n + 1) *
// sample_size) in NCHW and channels_last alike (the batch dimension is outermost in both).
// Forward: a = h1, b = h2, c = shortcut (or nullptr), out0 = y, coef = alpha.
// Backward: a = grad_y, out0 = grad_h1, out1 = grad_h2, coef = beta.
struct ShakeShakeParams {
  const void* a = nullptr;
  const void* b = nullptr;
  const void* c = nullptr;
  void* out0 = nullptr;
  void* out1 = nullptr;
  ShakeShakeCoef coef;
  int64_t batch = 0, sample_size = 0;

  CIFAROPS_INLINE int64_t numel() const { return batch * sample_size; }
};

// alpha * h1 + (1 - alpha) * h2: exact for alpha = 0.5 and for alpha in {0, 1}.
template <typename acc_t>
CIFAROPS_INLINE acc_t shake_shake_mix(acc_t alpha, acc_t h1, acc_t h2) {
  return alpha * h1 + (acc_t(1) - alpha) * h2;
}

// ------------------------------------------------------------------------ the CUDA kernels, host-runnable
//
// Grid: blockIdx.y walks the samples (one coefficient per block and sample, no per-element division), blockIdx.x
// the packets of one sample: 16-byte packets of kVec elements when a sample holds whole packets and every
// pointer is aligned (a packet then never straddles two samples, so it has one coefficient), else one element a
// thread; 32-bit indices unless a sample has 2^31 packets or more (minus what the last grid stride may
// overshoot); at least one block, also for an empty batch (block 0 writes the state).
struct ShakeShakeLaunch {
  bool vectorize = false, small = false;
  unsigned blocks = 1, sample_blocks = 1;  // gridDim.x, gridDim.y
};

template <typename scalar_t>
inline ShakeShakeLaunch shake_shake_launch(const ShakeShakeParams& p) {
  constexpr int kVec = packet_size<scalar_t>();
  ShakeShakeLaunch launch;
  launch.vectorize = p.sample_size % kVec == 0 && aligned16(p.a) && aligned16(p.out0) &&
                     (p.b == nullptr || aligned16(p.b)) && (p.c == nullptr || aligned16(p.c)) &&
                     (p.out1 == nullptr || aligned16(p.out1));
  const int64_t packets = p.sample_size / (launch.vectorize ? kVec : 1);
  launch.blocks = elementwise_blocks(packets);
  launch.sample_blocks = static_cast<unsigned>(p.batch < 1 ? 1 : (p.batch > 65535 ? 65535 : p.batch));
  launch.small = packets < (int64_t(1) << 31) - 2 * int64_t(65536) * kElementwiseThreads;
  return launch;
}

// Calls launcher.template operator()<kVec, index_t>() with the instantiation `launch` needs.
template <typename scalar_t, typename Launcher>
inline void shake_shake_dispatch(const ShakeShakeLaunch& launch, Launcher&& launcher) {
  packet_dispatch<scalar_t>(launch.vectorize, launch.small, launcher);
}

// Thread `thread` of block (`block`, `sample_block`) in a grid of (`blocks`, `sample_blocks`) blocks: for each
// of its samples, its grid-stride loop over the sample's packets. `s`: the resolved RNG state. The sample
// coordinates stay unsigned, as blockIdx.y and gridDim.y are (as int64_t, ptxas schedules the loop worse).
template <typename scalar_t, int kVec, typename index_t>
CIFAROPS_INLINE void shake_shake_forward_thread(const ShakeShakeParams& p, PhiloxState s, index_t block,
                                                index_t thread, index_t blocks, unsigned sample_block,
                                                unsigned sample_blocks) {
  using acc_t = typename OpMath<scalar_t>::type;
  using Vec = Packet<scalar_t, kVec>;
  const index_t packets = static_cast<index_t>(p.sample_size / kVec);
  const index_t step = blocks * kElementwiseThreads;
  for (int64_t n = sample_block; n < p.batch; n += sample_blocks) {
    const acc_t alpha = p.coef.value<acc_t>(s, n);
    const int64_t base = n * p.sample_size;
    const auto* h1 = reinterpret_cast<const Vec*>(static_cast<const scalar_t*>(p.a) + base);
    const auto* h2 = reinterpret_cast<const Vec*>(static_cast<const scalar_t*>(p.b) + base);
    const auto* x = p.c == nullptr ? nullptr : reinterpret_cast<const Vec*>(static_cast<const scalar_t*>(p.c) + base);
    auto* y = reinterpret_cast<Vec*>(static_cast<scalar_t*>(p.out0) + base);
    for (index_t i = block * kElementwiseThreads + thread; i < packets; i += step) {
      const Vec a = h1[i];
      const Vec b = h2[i];
      Vec c;
      if (x != nullptr) c = x[i];
      Vec out;
#if defined(__CUDACC__)
#pragma unroll
#endif
      for (int j = 0; j < kVec; ++j) {
        acc_t v = shake_shake_mix(alpha, to_acc<acc_t>(a.v[j]), to_acc<acc_t>(b.v[j]));
        if (x != nullptr) v += to_acc<acc_t>(c.v[j]);
        out.v[j] = from_acc<scalar_t>(v);
      }
      y[i] = out;
    }
  }
}

template <typename scalar_t, int kVec, typename index_t>
CIFAROPS_INLINE void shake_shake_backward_thread(const ShakeShakeParams& p, PhiloxState s, index_t block,
                                                 index_t thread, index_t blocks, unsigned sample_block,
                                                 unsigned sample_blocks) {
  using acc_t = typename OpMath<scalar_t>::type;
  using Vec = Packet<scalar_t, kVec>;
  const index_t packets = static_cast<index_t>(p.sample_size / kVec);
  const index_t step = blocks * kElementwiseThreads;
  for (int64_t n = sample_block; n < p.batch; n += sample_blocks) {
    const acc_t beta = p.coef.value<acc_t>(s, n);
    const int64_t base = n * p.sample_size;
    const auto* g = reinterpret_cast<const Vec*>(static_cast<const scalar_t*>(p.a) + base);
    auto* g1 = reinterpret_cast<Vec*>(static_cast<scalar_t*>(p.out0) + base);
    auto* g2 = reinterpret_cast<Vec*>(static_cast<scalar_t*>(p.out1) + base);
    for (index_t i = block * kElementwiseThreads + thread; i < packets; i += step) {
      const Vec v = g[i];
      Vec o1, o2;
#if defined(__CUDACC__)
#pragma unroll
#endif
      for (int j = 0; j < kVec; ++j) {
        const acc_t e = to_acc<acc_t>(v.v[j]);
        o1.v[j] = from_acc<scalar_t>(beta * e);
        o2.v[j] = from_acc<scalar_t>((acc_t(1) - beta) * e);
      }
      g1[i] = o1;
      g2[i] = o2;
    }
  }
}

}  // namespace cifarops
