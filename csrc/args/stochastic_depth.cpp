// Stochastic depth's torch side: argument checks (written once, here; python/cifarops/ops/stochastic_depth.py
// has the twin for the Triton and fake kernels), the kernel parameters, and the autograd kernel of the
// compiled ops.
#include "args/stochastic_depth.h"

#include <torch/library.h>

#include "args/autograd.h"
#include "args/common.h"
#include "args/residual_nodes.h"
#include "args/rng.h"
#include "args/signatures.h"

namespace cifarops {
namespace {

constexpr const char* kOp = "cifarops.stochastic_depth";
constexpr const char* kBackwardOp = "cifarops._stochastic_depth_backward";

Level parse_mode(c10::string_view mode, const char* op) {
  if (mode == "row") return Level::Sample;
  if (mode == "batch") return Level::Batch;
  TORCH_CHECK_VALUE(false, op, ": mode must be one of ('row', 'batch'), got '", mode, "'");
}

void check_p(double p, const char* op) {
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, op, ": p must be a number in [0, 1], got ", p);
}

// s: 1 / (1 - p) when scaled (0 at p = 1, where every gate is 0: y = x, not 0 * inf), else 1.
double keep_scale(double p, bool scale_by_keep) {
  if (!scale_by_keep) return 1.0;
  return p < 1.0 ? 1.0 / (1.0 - p) : 0.0;
}

// The gate of one direction: explicit, drawn at the mode's level, or evaluation's constant; the coefficient is
// always the constant 0, so the pass's scale b + (1 - b) * 0 is the gate itself.
void set_noise(ShakeDropCall& call, const at::Tensor& h, double p, Level level, bool scale_by_keep, bool training,
               const std::optional<at::Tensor>& gate, const char* h_name, const char* op) {
  ShakeDropParams& params = call.params;
  params.coef.kind = Noise::Constant;
  params.coef.value = 0.0;
  call.streams = 1;
  if (!training) {
    params.gate.kind = Noise::Constant;
    params.gate.value = scale_by_keep ? 1.0 : 1.0 - p;
    return;
  }
  if (gate.has_value()) {
    set_explicit_gate(call, h, *gate, h_name, op);
  } else {
    params.gate.kind = Noise::Drawn;
    params.gate.level = level;
    params.gate.hi = static_cast<float>(1.0 - p);
    params.gate.stream = kShakeDropGateStream;
    call.draws = true;
  }
  params.gate.gain = keep_scale(p, scale_by_keep);
}

}  // namespace

ShakeDropCall stochastic_depth_forward_call(const at::Tensor& h, const std::optional<at::Tensor>& shortcut, double p,
                                            c10::string_view mode, bool scale_by_keep, bool training,
                                            const std::optional<at::Tensor>& gate,
                                            const std::optional<at::Tensor>& rng_state) {
  check_p(p, kOp);
  const Level level = parse_mode(mode, kOp);
  check_nc_input(h, "h", kOp);
  check_shortcut(h, shortcut, kOp);
  TORCH_CHECK_VALUE(training || !gate.has_value(), kOp, ": gate is training noise; pass training=True");
  if (rng_state.has_value()) check_rng_state(*rng_state, h, "rng_state", kOp);
  const at::MemoryFormat format = dense_format(h);
  ShakeDropCall call = shake_drop_start_call(h, format);
  set_shortcut(call, shortcut, format);
  set_noise(call, h, p, level, scale_by_keep, training, gate, "h", kOp);
  call.state_in = rng_state;
  return call;
}

ShakeDropCall stochastic_depth_backward_call(const at::Tensor& grad_y, const at::Tensor& rng_state, double p,
                                             c10::string_view mode, bool scale_by_keep, bool training,
                                             const std::optional<at::Tensor>& gate) {
  check_p(p, kBackwardOp);
  const Level level = parse_mode(mode, kBackwardOp);
  check_nc_input(grad_y, "grad_y", kBackwardOp);
  check_rng_state(rng_state, grad_y, "rng_state", kBackwardOp);
  ShakeDropCall call = shake_drop_start_call(grad_y, dense_format(grad_y));
  set_noise(call, grad_y, p, level, scale_by_keep, training, gate, "grad_y", kBackwardOp);
  call.state = rng_state;
  call.state_in = rng_state;
  return call;
}

// ------------------------------------------------------------------------------------------------ autograd

namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// What the backward op needs: the state, an explicit gate and the hyper-parameters; never h, the shortcut or
// the output (saved variables, so that saved-tensor hooks see them).
struct SavedGate {
  static constexpr const char* kNode = "StochasticDepthBackward";
  static constexpr const char* kBackwardNode = "StochasticDepthBackwardBackward";
  SavedVariable state, gate;  // gate: set only when explicit
  double p = 0;
  bool row = true, scale_by_keep = true, training = true;

  void save(const at::Tensor& rng_state, const std::optional<at::Tensor>& gate_, double p_, c10::string_view mode,
            bool scale, bool train) {
    state = SavedVariable(rng_state, /*is_output=*/false);
    if (gate_.has_value()) gate = SavedVariable(*gate_, /*is_output=*/false);
    p = p_;
    row = parse_mode(mode, kOp) == Level::Sample;
    scale_by_keep = scale;
    training = train;
  }

  void release() {
    state.reset_data();
    gate.reset_data();
  }

  // grad_h = b * s * grad, through the backward op.
  at::Tensor backward(const at::Tensor& grad) {
    // Unpacked before the guard: an unpack hook (a checkpoint's recomputation) records a graph of its own.
    const at::Tensor s = state.unpack();
    const std::optional<at::Tensor> g = unpack_optional(gate);
    BackwardGuard guard;
    return stochastic_depth_backward_op().call(grad, s, p, row ? "row" : "batch", scale_by_keep, training, g);
  }
};

std::tuple<at::Tensor, at::Tensor> stochastic_depth_autograd(const at::Tensor& h,
                                                             const std::optional<at::Tensor>& shortcut, double p,
                                                             c10::string_view mode, bool scale_by_keep,
                                                             bool training, const std::optional<at::Tensor>& gate,
                                                             const std::optional<at::Tensor>& rng_state) {
  const bool records = records_grad(kOp, h, shortcut);
  auto [out, state] = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return stochastic_depth_op().call(h, shortcut, p, mode, scale_by_keep, training, gate, rng_state);
  }();
  if (records) {
    auto node = make_node<ResidualBackward<SavedGate>>(h, shortcut);
    node->noise.save(state, gate, p, mode, scale_by_keep, training);
    node->set_shortcut(h, shortcut);
    set_history(node, out);
  }
  return {std::move(out), std::move(state)};
}

at::Tensor stochastic_depth_backward_autograd(const at::Tensor& grad_y, const at::Tensor& rng_state, double p,
                                              c10::string_view mode, bool scale_by_keep, bool training,
                                              const std::optional<at::Tensor>& gate) {
  const bool records = records_grad(kBackwardOp, grad_y);
  at::Tensor grad_h = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return stochastic_depth_backward_op().call(grad_y, rng_state, p, mode, scale_by_keep, training, gate);
  }();
  if (records) {
    auto node = make_node<ResidualBackwardBackward<SavedGate>>(grad_y);
    node->noise.save(rng_state, gate, p, mode, scale_by_keep, training);
    set_history(node, grad_h);
  }
  return grad_h;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, Autograd, m) {
  m.impl("stochastic_depth", &stochastic_depth_autograd);
  m.impl("_stochastic_depth_backward", &stochastic_depth_backward_autograd);
}

}  // namespace cifarops
