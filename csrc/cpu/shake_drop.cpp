// ShakeDrop on the CPU: one pass over memory, parallel over rows with at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

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
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t m0 = r * row_length;
      const Position q0 = locate(p, m0);
      if (!p.channels_last && p.coef_source == CoefSource::PerChannel) {
        // One scale for the whole plane: a plain axpy that the compiler vectorises.
        const acc_t gate = static_cast<const acc_t*>(p.gate)[q0.n * p.gate_stride];
        const acc_t scale = shake_drop_scale(gate, shake_drop_coefficient<acc_t>(p, q0, m0));
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
      for (int64_t j = 0; j < row_length; ++j) {
        const Position q{q0.n, p.channels_last ? j : q0.c, p.channels_last ? q0.s : j};
        shake_drop_element<scalar_t>(p, q, m0 + j);
      }
    }
  });
}

void run(const ShakeDropCall& call) {
  if (call.params.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.out.scalar_type(), "shake_drop_cpu",
                                  [&] { shake_drop_rows<scalar_t>(call.params); });
}

at::Tensor shake_drop_cpu(const at::Tensor& h, const std::optional<at::Tensor>& shortcut, const at::Tensor& gate,
                          const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& beta,
                          const std::optional<at::Tensor>& seed, at::ArrayRef<double> alpha_range,
                          at::ArrayRef<double> beta_range) {
  const ShakeDropCall call = shake_drop_forward_call(h, shortcut, gate, alpha, beta, seed, alpha_range, beta_range);
  run(call);
  return call.out;
}

at::Tensor shake_drop_backward_cpu(const at::Tensor& grad_y, const at::Tensor& gate,
                                   const std::optional<at::Tensor>& beta, const std::optional<at::Tensor>& seed,
                                   at::ArrayRef<double> beta_range) {
  const ShakeDropCall call = shake_drop_backward_call(grad_y, gate, beta, seed, beta_range);
  run(call);
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CPU, m) {
  m.impl("shake_drop", &shake_drop_cpu);
  m.impl("_shake_drop_backward", &shake_drop_backward_cpu);
}

}  // namespace cifarops
