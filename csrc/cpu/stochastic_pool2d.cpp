// Stochastic pooling on the CPU: one pass each way, parallel over rows with at::parallel_for (math in
// cifarops/stochastic_pool2d.h); the uniforms drawn from the CPU generator's state (one random64() per call).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "args/rng.h"
#include "args/signatures.h"
#include "args/stochastic_pool2d.h"
#include "cifarops/stochastic_pool2d.h"

namespace cifarops {
namespace {

// Rows of the produced tensor (outputs forward, inputs backward): an NCHW row is (n, c, h) with w running, a
// channels_last row is (n, h) with (w, c) running; each row's positions follow by stepping, without divisions.
// NCHW forward rows draw their uniforms a block of Philox quads at a time (consecutive logical indices).
template <typename scalar_t>
void run_rows(const StochasticPoolParams& p) {
  const bool backward = p.backward();
  const int64_t height = backward ? p.in_h : p.out_h, width = backward ? p.in_w : p.out_w;
  const int64_t rows = p.channels_last ? p.batch * height : p.batch * p.channels * height;
  const int64_t row_size = p.channels_last ? width * p.channels : width;
  const bool block_draw = p.kind == StochasticPoolKind::Sample && p.uniforms == nullptr && !p.channels_last;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, row_size));
  at::parallel_for(0, rows, grain, [&](int64_t row_begin, int64_t row_end) {
    constexpr int kChunk = 256;  // outputs whose uniforms are drawn together
    float uniforms[kChunk];
    uint32_t words[4 * (kChunk / 4 + 2)];
    for (int64_t row = row_begin; row < row_end; ++row) {
      PoolPosition<int64_t> q;
      if (p.channels_last) {
        q.n = row / height, q.h = row % height, q.c = 0;
      } else {
        q.h = row % height;
        q.c = (row / height) % p.channels;
        q.n = row / (height * p.channels);
      }
      const int64_t m0 = row * row_size;
      for (int64_t j0 = 0; j0 < row_size; j0 += kChunk) {
        const int64_t count = std::min<int64_t>(kChunk, row_size - j0);
        if (block_draw) {  // logical index = memory index in NCHW
          const int64_t first = m0 + j0, first_quad = first / 4;
          const int quads = static_cast<int>((first + count + 3) / 4 - first_quad);
          philox_quads(p.rng, static_cast<uint64_t>(first_quad), 0, quads, words);
          for (int64_t j = 0; j < count; ++j) uniforms[j] = philox_bits_to_uniform(words[first - 4 * first_quad + j]);
        }
        for (int64_t j = j0; j < j0 + count; ++j) {
          if (p.channels_last) {
            q.w = j / p.channels, q.c = j % p.channels;
          } else {
            q.w = j;
          }
          const int64_t m = m0 + j;
          if (backward) {
            stochastic_pool_input_at<scalar_t, int64_t>(p, m, q);
          } else {
            float u = 0.0f;
            if (p.kind == StochasticPoolKind::Sample) {
              u = block_draw ? uniforms[j - j0] : stochastic_pool_uniform<int64_t>(p, m, q);
            }
            stochastic_pool_output_at<scalar_t, int64_t>(p, m, q, u);
          }
        }
      }
    }
  });
}

void run(const StochasticPoolParams& p, at::ScalarType type) {
  if (p.items() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "stochastic_pool2d_cpu",
                                  [&] { run_rows<scalar_t>(p); });
}

Tensor3 stochastic_pool_cpu(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, bool ceil_mode, const OptTensor& uniforms,
                            const OptTensor& rng_state) {
  StochasticPoolCall call =
      stochastic_pool_forward_call(x, kernel_size, stride, padding, ceil_mode, uniforms, rng_state, true);
  call.params.rng = cpu_state(call.state_in, call.draws);
  at::Tensor state = cpu_state_tensor(x, call.params.rng);
  run(call.params, x.scalar_type());
  return {call.out, call.offset, state};
}

at::Tensor stochastic_pool_backward_cpu(const at::Tensor& grad_y, const at::Tensor& offset,
                                        c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                                        at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode) {
  StochasticPoolCall call =
      stochastic_pool_backward_call(grad_y, offset, input_size, kernel_size, stride, padding, ceil_mode);
  run(call.params, grad_y.scalar_type());
  return call.out;
}

at::Tensor stochastic_pool_expectation_cpu(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, bool ceil_mode) {
  StochasticPoolCall call =
      stochastic_pool_forward_call(x, kernel_size, stride, padding, ceil_mode, std::nullopt, std::nullopt, false);
  run(call.params, x.scalar_type());
  return call.out;
}

at::Tensor stochastic_pool_expectation_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                    at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                    at::IntArrayRef padding, bool ceil_mode) {
  StochasticPoolCall call =
      stochastic_pool_expectation_backward_call(grad_y, x, kernel_size, stride, padding, ceil_mode);
  run(call.params, x.scalar_type());
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CPU, m) {
  m.impl("stochastic_pool2d", &stochastic_pool_cpu);
  m.impl("_stochastic_pool2d_backward", &stochastic_pool_backward_cpu);
  m.impl("stochastic_pool2d_expectation", &stochastic_pool_expectation_cpu);
  m.impl("_stochastic_pool2d_expectation_backward", &stochastic_pool_expectation_backward_cpu);
}

}  // namespace cifarops
