// ShakeDrop on the CPU: one pass over memory, parallel over rows with at::parallel_for. The noise is drawn
// from the CPU generator's state here (one random64() per call), and each row computes its own.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "args/rng.h"
#include "args/shake_drop.h"
#include "cifarops/shake_drop.h"

namespace cifarops {
namespace {

// A row is the HW plane (NCHW) or the C vector (channels_last): contiguous, with one n throughout.
template <typename scalar_t>
void shake_drop_rows(const ShakeDropParams& p) {
  using acc_t = typename OpMath<scalar_t>::type;
  const int64_t row_length = p.channels_last ? p.channels : p.spatial;
  const int64_t rows = p.numel() / row_length;
  const int64_t grain = std::max<int64_t>(1, 32768 / row_length);
  const bool pixel_philox = p.coef.kind == Noise::Drawn && p.coef.level == Level::Pixel;
  // A per-batch or per-sample drawn coefficient is the same for every row of a sample: drawn once per sample.
  const bool per_sample_draw = p.coef.kind == Noise::Drawn && (p.coef.level == Level::Batch || p.coef.level == Level::Sample);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    int64_t cached_n = -1;  // rows run in order, so n changes rarely: the gate's Philox call once per sample
    acc_t gate = 0, sample_coef = 0;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t m0 = r * row_length;
      const Position q0 = locate<int64_t>(p, m0);
      if (q0.n != cached_n) {
        cached_n = q0.n;
        gate = shake_drop_gate<acc_t>(p, q0.n);
        if (per_sample_draw) sample_coef = shake_drop_coefficient<acc_t>(p, q0, m0);
      }
      if (!p.channels_last && !p.pixel_noise()) {
        // One scale for the whole plane: a plain axpy that the compiler vectorises.
        const acc_t coef = per_sample_draw ? sample_coef : shake_drop_coefficient<acc_t>(p, q0, m0);
        const acc_t scale = shake_drop_scale(gate, coef);
        const scalar_t* CIFAROPS_RESTRICT h = static_cast<const scalar_t*>(p.h) + m0;
        scalar_t* CIFAROPS_RESTRICT out = static_cast<scalar_t*>(p.out) + m0;
        if (p.shortcut != nullptr && q0.c < p.shortcut_channels) {
          const scalar_t* CIFAROPS_RESTRICT x = static_cast<const scalar_t*>(p.shortcut) + shortcut_offset(p, q0);
          for (int64_t j = 0; j < row_length; ++j) {
            out[j] = static_cast<scalar_t>(scale * static_cast<acc_t>(h[j]) + static_cast<acc_t>(x[j]));
          }
        } else {
          for (int64_t j = 0; j < row_length; ++j) out[j] = static_cast<scalar_t>(scale * static_cast<acc_t>(h[j]));
        }
        continue;
      }
      if (!p.channels_last && pixel_philox) {
        // Consecutive logical indices: one Philox call gives the uniforms of four elements.
        const uint64_t base = static_cast<uint64_t>(logical_index(p, q0));
        Philox4 quad{};
        for (int64_t j = 0; j < row_length; ++j) {
          const uint64_t index = base + static_cast<uint64_t>(j);
          if (j == 0 || index % 4 == 0) quad = philox_quad(p.rng, index / 4, p.coef.stream);
          const acc_t coef = coefficient_from_uniform<acc_t>(p.coef, philox_bits_to_uniform(philox_word(quad, index % 4)));
          shake_drop_store<scalar_t>(p, Position{q0.n, q0.c, j}, m0 + j, shake_drop_scale(gate, coef));
        }
        continue;
      }
      for (int64_t j = 0; j < row_length; ++j) {
        const Position q{q0.n, p.channels_last ? j : q0.c, p.channels_last ? q0.s : j};
        const acc_t coef = per_sample_draw ? sample_coef : shake_drop_coefficient<acc_t>(p, q, m0 + j);
        shake_drop_store<scalar_t>(p, q, m0 + j, shake_drop_scale(gate, coef));
      }
    }
  });
}

}  // namespace

void shake_drop_run_cpu(ShakeDropCall& call) {
  call.params.rng = cpu_state(call.state_in, call.draws);
  if (!call.state.defined()) call.state = cpu_state_tensor(call.out, call.params.rng);
  if (call.params.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.out.scalar_type(), "shake_drop_cpu",
                                  [&] { shake_drop_rows<scalar_t>(call.params); });
}

namespace {

std::tuple<at::Tensor, at::Tensor> shake_drop_cpu(
    const at::Tensor& h, const std::optional<at::Tensor>& shortcut, double p_drop, at::ArrayRef<double> alpha_range,
    at::ArrayRef<double> beta_range, c10::string_view gate_level, c10::string_view level, bool training,
    const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& alpha,
    const std::optional<at::Tensor>& beta, const std::optional<at::Tensor>& rng_state) {
  ShakeDropCall call = shake_drop_forward_call(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level,
                                               training, gate, alpha, beta, rng_state);
  shake_drop_run_cpu(call);
  return {call.out, call.state};
}

at::Tensor shake_drop_backward_cpu(const at::Tensor& grad_y, const at::Tensor& rng_state, double p_drop,
                                   at::ArrayRef<double> alpha_range, at::ArrayRef<double> beta_range,
                                   c10::string_view gate_level, c10::string_view level, bool training,
                                   const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& beta) {
  ShakeDropCall call = shake_drop_backward_call(grad_y, rng_state, p_drop, alpha_range, beta_range, gate_level, level,
                                                training, gate, beta);
  shake_drop_run_cpu(call);
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CPU, m) {
  m.impl("shake_drop", &shake_drop_cpu);
  m.impl("_shake_drop_backward", &shake_drop_backward_cpu);
}

}  // namespace cifarops
