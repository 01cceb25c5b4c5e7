// Torch side of stochastic depth, shared by every compiled backend. The op is ShakeDrop's pass with a zero
// coefficient and the gate worth s (cifarops/shake_drop.h): out = shortcut + b * s * h, so it builds a
// ShakeDropCall, and the CPU loop and CUDA kernel of csrc/cpu|cuda/shake_drop.* run it.
#pragma once

#include "args/shake_drop.h"

namespace cifarops {

// stochastic_depth: out = shortcut + b * s * h (SPEC.md). The caller runs the pass (shake_drop_run_cpu / _cuda).
ShakeDropCall stochastic_depth_forward_call(const at::Tensor& h, const std::optional<at::Tensor>& shortcut, double p,
                                            c10::string_view mode, bool scale_by_keep, bool training,
                                            const std::optional<at::Tensor>& gate,
                                            const std::optional<at::Tensor>& rng_state);

// _stochastic_depth_backward: grad_h = b * s * grad_y, the gate regenerated from rng_state.
ShakeDropCall stochastic_depth_backward_call(const at::Tensor& grad_y, const at::Tensor& rng_state, double p,
                                             c10::string_view mode, bool scale_by_keep, bool training,
                                             const std::optional<at::Tensor>& gate);

}  // namespace cifarops
