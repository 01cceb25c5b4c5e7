// Drop-Activation on the CPU: one pass, parallel over blocks of elements with at::parallel_for; the mask drawn
// from the CPU generator's state (one random64() per call), one Philox call per four NCHW-consecutive elements.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "args/drop_activation.h"
#include "args/rng.h"
#include "cifarops/drop_activation.h"

namespace cifarops {
namespace {

template <typename scalar_t>
void drop_activation_elements(const DropActivationParams& p) {
  using acc_t = typename OpMath<scalar_t>::type;
  const scalar_t* CIFAROPS_RESTRICT in = static_cast<const scalar_t*>(p.in);
  const scalar_t* CIFAROPS_RESTRICT ys = static_cast<const scalar_t*>(p.y);
  scalar_t* CIFAROPS_RESTRICT out = static_cast<scalar_t*>(p.out);
  const bool draws = p.training && p.mask == nullptr;
  // Blocks of whole Philox quads: every block starts its own quad.
  at::parallel_for(0, p.numel(), 32768, [&](int64_t begin, int64_t end) {
    Philox4 quad{};
    for (int64_t m = begin; m < end; ++m) {
      bool kept = false;
      if (p.mask != nullptr) {
        kept = p.training && p.mask[m] != 0;
      } else if (draws) {
        const uint64_t index = drop_activation_logical<int64_t>(p, m);
        if (p.channels_last || m == begin || index % 4 == 0) quad = philox_quad(p.rng, index / 4, 0);
        kept = philox_keep(philox_bits_to_uniform(philox_word(quad, index % 4)), p.keep);
      }
      const acc_t y = ys != nullptr ? static_cast<acc_t>(ys[m]) : acc_t(0);
      out[m] = static_cast<scalar_t>(drop_activation_value<acc_t>(p, static_cast<acc_t>(in[m]), y, kept));
    }
  });
}

void run(DropActivationCall& call) {
  call.params.rng = cpu_state(call.state_in, call.draws);
  if (!call.state.defined()) call.state = cpu_state_tensor(call.out, call.params.rng);
  if (call.params.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.out.scalar_type(), "drop_activation_cpu",
                                  [&] { drop_activation_elements<scalar_t>(call.params); });
}

std::tuple<at::Tensor, at::Tensor> drop_activation_cpu(const at::Tensor& x, double keep, bool training,
                                                       const std::optional<at::Tensor>& mask,
                                                       const std::optional<at::Tensor>& rng_state) {
  DropActivationCall call = drop_activation_forward_call(x, keep, training, mask, rng_state);
  run(call);
  return {call.out, call.state};
}

at::Tensor drop_activation_backward_cpu(const at::Tensor& grad_y, const at::Tensor& y, const at::Tensor& rng_state,
                                        double keep, bool training, const std::optional<at::Tensor>& mask) {
  DropActivationCall call = drop_activation_backward_call(grad_y, y, rng_state, keep, training, mask);
  run(call);
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CPU, m) {
  m.impl("drop_activation", &drop_activation_cpu);
  m.impl("_drop_activation_backward", &drop_activation_backward_cpu);
}

}  // namespace cifarops
