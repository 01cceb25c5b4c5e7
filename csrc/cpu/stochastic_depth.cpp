// Stochastic depth on the CPU: ShakeDrop's row loop (csrc/cpu/shake_drop.cpp) with a zero coefficient and the
// gate worth s, so one pass computes shortcut + b * s * h; the gate drawn from the CPU generator's state.
#include <torch/library.h>

#include "args/stochastic_depth.h"

namespace cifarops {
namespace {

std::tuple<at::Tensor, at::Tensor> stochastic_depth_cpu(const at::Tensor& h, const std::optional<at::Tensor>& shortcut,
                                                        double p, c10::string_view mode, bool scale_by_keep,
                                                        bool training, const std::optional<at::Tensor>& gate,
                                                        const std::optional<at::Tensor>& rng_state) {
  ShakeDropCall call = stochastic_depth_forward_call(h, shortcut, p, mode, scale_by_keep, training, gate, rng_state);
  shake_drop_run_cpu(call);
  return {call.out, call.state};
}

at::Tensor stochastic_depth_backward_cpu(const at::Tensor& grad_y, const at::Tensor& rng_state, double p,
                                         c10::string_view mode, bool scale_by_keep, bool training,
                                         const std::optional<at::Tensor>& gate) {
  ShakeDropCall call = stochastic_depth_backward_call(grad_y, rng_state, p, mode, scale_by_keep, training, gate);
  shake_drop_run_cpu(call);
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CPU, m) {
  m.impl("stochastic_depth", &stochastic_depth_cpu);
  m.impl("_stochastic_depth_backward", &stochastic_depth_backward_cpu);
}

}  // namespace cifarops
