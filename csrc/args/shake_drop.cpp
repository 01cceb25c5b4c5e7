// ShakeDrop's torch side: argument checks (written once, here; python/cifarops/ops/shake_drop.py has the
// twin for the Triton and fake kernels), the kernel parameters, and the autograd kernel of the compiled ops.
#include "args/shake_drop.h"

#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>

#include "args/common.h"
#include "args/rng.h"

namespace cifarops {
namespace {

constexpr const char* kOp = "cifarops.shake_drop";

Level parse_level(c10::string_view value, bool gate) {
  if (value == "batch") return Level::Batch;
  if (value == "sample") return Level::Sample;
  if (!gate && value == "channel") return Level::Channel;
  if (!gate && value == "pixel") return Level::Pixel;
  if (gate) TORCH_CHECK_VALUE(false, kOp, ": gate_level must be one of ('batch', 'sample'), got '", value, "'");
  TORCH_CHECK_VALUE(false, kOp, ": level must be one of ('batch', 'sample', 'channel', 'pixel'), got '", value, "'");
}

void check_hyper_parameters(double p_drop, at::ArrayRef<double> alpha_range, at::ArrayRef<double> beta_range) {
  TORCH_CHECK_VALUE(p_drop >= 0.0 && p_drop <= 1.0, kOp, ": p_drop must be a number in [0, 1], got ", p_drop);
  for (const auto& [range, name] : {std::pair{alpha_range, "alpha_range"}, std::pair{beta_range, "beta_range"}}) {
    TORCH_CHECK_VALUE(range.size() == 2, kOp, ": ", name, " must be a pair (low, high) of numbers, got ", range.size(),
                      " values");
    TORCH_CHECK_VALUE(range[0] <= range[1], kOp, ": ", name, " must satisfy low <= high, got (", range[0], ", ",
                      range[1], ")");
  }
}

void check_floating_noise(const at::Tensor& t, const at::Tensor& h, const char* name, const char* h_name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), kOp, ": ", name, " must be a floating-point tensor, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == h.device(), kOp, ": ", name, " is on ", t.device(), " but ", h_name, " is on ",
                    h.device());
}

// An explicit gate: (1,) or (N,), any floating dtype, used in the compute type.
void set_gate(ShakeDropCall& call, const at::Tensor& h, const at::Tensor& gate, const char* h_name) {
  check_floating_noise(gate, h, "gate", h_name);
  const int64_t n = h.size(0);
  TORCH_CHECK_VALUE(gate.dim() == 1 && (gate.size(0) == 1 || gate.size(0) == n), kOp,
                    ": gate must have shape (1,) or (N,) = (", n, ",), got ", gate.sizes());
  const at::Tensor g = gate.to(opmath_type(h));
  call.keep_alive.push_back(g);
  NoiseSource& src = call.params.gate;
  src.kind = Noise::PerChannel;
  src.data = g.data_ptr();
  src.stride_n = g.size(0) == 1 ? 0 : g.stride(0);
}

// An explicit coefficient: (1,), (N,), (N, C) or h's shape, any floating dtype. Returns whether it is
// per element (h's shape) rather than per batch, sample or channel.
bool check_coefficient(const at::Tensor& h, const at::Tensor& coef, const char* name, const char* h_name) {
  check_floating_noise(coef, h, name, h_name);
  const int64_t n = h.size(0), c = h.size(1);
  const bool per_sample = coef.dim() == 1 && (coef.size(0) == 1 || coef.size(0) == n);
  const bool per_channel = coef.dim() == 2 && coef.size(0) == n && coef.size(1) == c;
  const bool per_element = coef.sizes() == h.sizes() && !per_channel;
  TORCH_CHECK_VALUE(per_sample || per_channel || per_element, kOp, ": ", name, " must have shape (1,), (N,) = (", n,
                    ",), (N, C) = (", n, ", ", c, ") or h's shape ", h.sizes(), ", got ", coef.sizes());
  return per_element;
}

// The coefficient tensor, in the compute type.
void set_coefficient(ShakeDropCall& call, const at::Tensor& h, at::MemoryFormat format, const at::Tensor& coef,
                     const char* name, const char* h_name) {
  const bool per_element = check_coefficient(h, coef, name, h_name);
  const bool per_channel = coef.dim() == 2 && !per_element;
  NoiseSource& src = call.params.coef;
  if (per_element) {
    const at::Tensor dense = coef.to(opmath_type(h)).contiguous(format);
    call.keep_alive.push_back(dense);
    src.kind = Noise::PerElement;
    src.data = dense.data_ptr();
    return;
  }
  const at::Tensor t = coef.to(opmath_type(h));
  call.keep_alive.push_back(t);
  src.kind = Noise::PerChannel;
  src.data = t.data_ptr();
  src.stride_n = t.size(0) == 1 ? 0 : t.stride(0);
  src.stride_c = per_channel ? t.stride(1) : 0;
}

ShakeDropCall start_call(const at::Tensor& h, at::MemoryFormat format) {
  ShakeDropCall call;
  at::Tensor dense = h.contiguous(format);
  call.keep_alive.push_back(dense);
  call.out = empty_output_like(dense, format);
  ShakeDropParams& p = call.params;
  p.h = dense.data_ptr();
  p.out = call.out.data_ptr();
  p.batch = h.size(0);
  p.channels = h.size(1);
  p.spatial = h.numel() == 0 ? 0 : h.numel() / (h.size(0) * h.size(1));
  p.channels_last = format == at::MemoryFormat::ChannelsLast;
  return call;
}

// The noise of one direction: gate, and alpha (forward) or beta (backward), each explicit, drawn or constant.
void set_noise(ShakeDropCall& call, const at::Tensor& h, at::MemoryFormat format, double p_drop,
               at::ArrayRef<double> alpha_range, at::ArrayRef<double> coef_range, Level gate_level, Level level,
               bool training, const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& coef,
               const char* coef_name, uint32_t coef_stream, const char* h_name) {
  ShakeDropParams& p = call.params;
  if (!training) {
    // Gate 0 makes the scale exactly the coefficient: y = x + E * h, and the gradient is E * dy.
    p.gate.kind = Noise::Constant;
    p.gate.value = 0.0;
    p.coef.kind = Noise::Constant;
    p.coef.value = (1.0 - p_drop) + p_drop * (alpha_range[0] + alpha_range[1]) / 2;
    return;
  }
  if (gate.has_value()) {
    set_gate(call, h, *gate, h_name);
  } else {
    p.gate.kind = Noise::Drawn;
    p.gate.level = gate_level;
    p.gate.hi = static_cast<float>(1.0 - p_drop);
    p.gate.stream = kShakeDropGateStream;
    call.draws = true;
  }
  if (coef.has_value()) {
    set_coefficient(call, h, format, *coef, coef_name, h_name);
  } else {
    p.coef.kind = Noise::Drawn;
    p.coef.level = level;
    p.coef.lo = static_cast<float>(coef_range[0]);
    p.coef.hi = static_cast<float>(coef_range[1]);
    p.coef.stream = coef_stream;
    call.draws = true;
  }
}

}  // namespace

ShakeDropCall shake_drop_forward_call(const at::Tensor& h, const std::optional<at::Tensor>& shortcut, double p_drop,
                                      at::ArrayRef<double> alpha_range, at::ArrayRef<double> beta_range,
                                      c10::string_view gate_level, c10::string_view level, bool training,
                                      const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& alpha,
                                      const std::optional<at::Tensor>& beta,
                                      const std::optional<at::Tensor>& rng_state) {
  check_hyper_parameters(p_drop, alpha_range, beta_range);
  const Level gate_lvl = parse_level(gate_level, /*gate=*/true), lvl = parse_level(level, /*gate=*/false);
  check_nc_input(h, "h", kOp);
  if (shortcut.has_value()) {
    const at::Tensor& x = *shortcut;
    check_nc_input(x, "shortcut", kOp);
    TORCH_CHECK_VALUE(x.device() == h.device(), kOp, ": shortcut is on ", x.device(), " but h is on ", h.device());
    TORCH_CHECK_TYPE(x.scalar_type() == h.scalar_type(), kOp, ": shortcut must have h's dtype ", h.scalar_type(),
                     ", got ", x.scalar_type());
    bool same_other_dims = x.dim() == h.dim() && x.size(0) == h.size(0);
    for (int64_t d = 2; same_other_dims && d < h.dim(); ++d) same_other_dims = x.size(d) == h.size(d);
    TORCH_CHECK_VALUE(same_other_dims, kOp, ": shortcut must match h in batch and spatial sizes, got ", x.sizes(),
                      " for h ", h.sizes());
    TORCH_CHECK_VALUE(x.size(1) <= h.size(1), kOp, ": shortcut has ", x.size(1), " channels, more than h's ",
                      h.size(1));
  }
  TORCH_CHECK_VALUE(training || !(gate.has_value() || alpha.has_value() || beta.has_value()), kOp,
                    ": gate, alpha and beta are training noise; pass training=True");
  if (beta.has_value()) check_coefficient(h, *beta, "beta", "h");  // checked now, though only backward uses it
  if (rng_state.has_value()) check_rng_state(*rng_state, h, "rng_state", kOp);

  const at::MemoryFormat format = dense_format(h);
  ShakeDropCall call = start_call(h, format);
  if (shortcut.has_value()) {
    at::Tensor dense = shortcut->contiguous(format);
    call.keep_alive.push_back(dense);
    call.params.shortcut = dense.data_ptr();
    call.params.shortcut_channels = dense.size(1);
  }
  set_noise(call, h, format, p_drop, alpha_range, alpha_range, gate_lvl, lvl, training, gate, alpha, "alpha",
            kShakeDropAlphaStream, "h");
  // Backward draws beta from the same state: the forward draws whenever any of the noise is drawn.
  call.draws = training && (!gate.has_value() || !alpha.has_value() || !beta.has_value());
  call.state_in = rng_state;
  return call;
}

ShakeDropCall shake_drop_backward_call(const at::Tensor& grad_y, const at::Tensor& rng_state, double p_drop,
                                       at::ArrayRef<double> alpha_range, at::ArrayRef<double> beta_range,
                                       c10::string_view gate_level, c10::string_view level, bool training,
                                       const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& beta) {
  check_hyper_parameters(p_drop, alpha_range, beta_range);
  const Level gate_lvl = parse_level(gate_level, true), lvl = parse_level(level, false);
  check_nc_input(grad_y, "grad_y", "cifarops._shake_drop_backward");
  check_rng_state(rng_state, grad_y, "rng_state", "cifarops._shake_drop_backward");
  const at::MemoryFormat format = dense_format(grad_y);
  ShakeDropCall call = start_call(grad_y, format);
  set_noise(call, grad_y, format, p_drop, alpha_range, beta_range, gate_lvl, lvl, training, gate, beta, "beta",
            kShakeDropBetaStream, "grad_y");
  call.state = rng_state;
  call.state_in = rng_state;
  return call;
}

// ------------------------------------------------------------------------------------------------ autograd

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> call_forward(const at::Tensor& h, const std::optional<at::Tensor>& shortcut,
                                                double p_drop, at::ArrayRef<double> alpha_range,
                                                at::ArrayRef<double> beta_range, c10::string_view gate_level,
                                                c10::string_view level, bool training,
                                                const std::optional<at::Tensor>& gate,
                                                const std::optional<at::Tensor>& alpha,
                                                const std::optional<at::Tensor>& beta,
                                                const std::optional<at::Tensor>& rng_state) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("cifarops::shake_drop", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const std::optional<at::Tensor>&, double, at::ArrayRef<double>,
                           at::ArrayRef<double>, c10::string_view, c10::string_view, bool,
                           const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                           const std::optional<at::Tensor>&, const std::optional<at::Tensor>&)>();
  return op.call(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, alpha, beta,
                 rng_state);
}

at::Tensor call_backward(const at::Tensor& grad_y, const at::Tensor& rng_state, double p_drop,
                         at::ArrayRef<double> alpha_range, at::ArrayRef<double> beta_range,
                         c10::string_view gate_level, c10::string_view level, bool training,
                         const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& beta) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("cifarops::_shake_drop_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, at::ArrayRef<double>,
                                         at::ArrayRef<double>, c10::string_view, c10::string_view, bool,
                                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&)>();
  return op.call(grad_y, rng_state, p_drop, alpha_range, beta_range, gate_level, level, training, gate, beta);
}

std::optional<at::Tensor> defined_or_none(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

const char* level_name(int64_t level) {
  static const char* const kNames[] = {"batch", "sample", "channel", "pixel"};
  return kNames[level];
}

// What backward needs: the state, the explicit gate and beta, and the scalar arguments (as IValues that need
// no allocation: levels as numbers, the ranges as four doubles).
void save_noise(AutogradContext* ctx, const at::Tensor& state, const std::optional<at::Tensor>& gate,
                const std::optional<at::Tensor>& beta, double p_drop, at::ArrayRef<double> alpha_range,
                at::ArrayRef<double> beta_range, c10::string_view gate_level, c10::string_view level, bool training) {
  ctx->save_for_backward({state, gate.value_or(at::Tensor()), beta.value_or(at::Tensor())});
  auto& data = ctx->saved_data;
  data["p_drop"] = p_drop;
  data["alpha_lo"] = alpha_range[0];
  data["alpha_hi"] = alpha_range[1];
  data["beta_lo"] = beta_range[0];
  data["beta_hi"] = beta_range[1];
  data["gate_level"] = static_cast<int64_t>(parse_level(gate_level, true));
  data["level"] = static_cast<int64_t>(parse_level(level, false));
  data["training"] = training;
}

// grad_h from the saved noise (the backward op), for both autograd functions below. Plain backward (no
// create_graph) calls it below autograd: its own autograd kernel would only record what nobody differentiates.
at::Tensor backward_from_saved(AutogradContext* ctx, const at::Tensor& grad) {
  const variable_list saved = ctx->get_saved_variables();
  auto& data = ctx->saved_data;
  const double alpha_range[2] = {data["alpha_lo"].toDouble(), data["alpha_hi"].toDouble()};
  const double beta_range[2] = {data["beta_lo"].toDouble(), data["beta_hi"].toDouble()};
  std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
  if (!at::GradMode::is_enabled()) below_autograd.emplace();
  return call_backward(grad, saved[0], data["p_drop"].toDouble(), alpha_range, beta_range,
                       level_name(data["gate_level"].toInt()), level_name(data["level"].toInt()),
                       data["training"].toBool(), defined_or_none(saved[1]), defined_or_none(saved[2]));
}

class ShakeDropFunction : public torch::autograd::Function<ShakeDropFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& h, const std::optional<at::Tensor>& shortcut,
                               double p_drop, at::ArrayRef<double> alpha_range, at::ArrayRef<double> beta_range,
                               c10::string_view gate_level, c10::string_view level, bool training,
                               const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& alpha,
                               const std::optional<at::Tensor>& beta, const std::optional<at::Tensor>& rng_state) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, state] = call_forward(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate,
                                     alpha, beta, rng_state);
    // Only the noise is saved: never h, the shortcut or the output.
    save_noise(ctx, state, gate, beta, p_drop, alpha_range, beta_range, gate_level, level, training);
    // Sizes as SymInts: under torch.compile with a dynamic batch, size() of a fake tensor raises.
    ctx->saved_data["has_shortcut"] = shortcut.has_value();
    if (shortcut.has_value()) {
      ctx->saved_data["shortcut_channels"] = shortcut->sym_size(1);
      ctx->saved_data["narrower"] = shortcut->sym_size(1) != h.sym_size(1);
    }
    ctx->mark_non_differentiable({state});
    ctx->set_materialize_grads(false);
    return {out, state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(12);
    const at::Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return result;
    if (ctx->needs_input_grad(0)) result[0] = backward_from_saved(ctx, grad_y);
    if (ctx->saved_data["has_shortcut"].toBool() && ctx->needs_input_grad(1)) {
      // dL/dx = dL/dy: the incoming gradient itself (a view when the shortcut is narrower), no copy.
      result[1] = !ctx->saved_data["narrower"].toBool()
                      ? grad_y
                      : grad_y.narrow_symint(1, 0, ctx->saved_data["shortcut_channels"].toSymInt());
    }
    return result;
  }
};

// The backward op is linear in grad_y with the same coefficients: its own gradient is itself.
class ShakeDropBackwardFunction : public torch::autograd::Function<ShakeDropBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_y, const at::Tensor& rng_state,
                               double p_drop, at::ArrayRef<double> alpha_range, at::ArrayRef<double> beta_range,
                               c10::string_view gate_level, c10::string_view level, bool training,
                               const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& beta) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor grad_h = call_backward(grad_y, rng_state, p_drop, alpha_range, beta_range, gate_level, level,
                                      training, gate, beta);
    save_noise(ctx, rng_state, gate, beta, p_drop, alpha_range, beta_range, gate_level, level, training);
    ctx->set_materialize_grads(false);
    return {grad_h};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(10);
    if (grads[0].defined() && ctx->needs_input_grad(0)) result[0] = backward_from_saved(ctx, grads[0]);
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor> shake_drop_autograd(
    const at::Tensor& h, const std::optional<at::Tensor>& shortcut, double p_drop, at::ArrayRef<double> alpha_range,
    at::ArrayRef<double> beta_range, c10::string_view gate_level, c10::string_view level, bool training,
    const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& alpha,
    const std::optional<at::Tensor>& beta, const std::optional<at::Tensor>& rng_state) {
  // A forward-mode tangent goes to the node's path too, which raises that forward AD is not implemented.
  const bool records = (at::GradMode::is_enabled() &&
                        (h.requires_grad() || (shortcut.has_value() && shortcut->requires_grad()))) ||
                       h._fw_grad(/*level=*/0).defined() ||
                       (shortcut.has_value() && shortcut->_fw_grad(/*level=*/0).defined());
  if (!records) {  // inference, or nothing to differentiate: no autograd node to build
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_forward(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, alpha, beta,
                        rng_state);
  }
  auto out = ShakeDropFunction::apply(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate,
                                      alpha, beta, rng_state);
  return {out[0], out[1]};
}

at::Tensor shake_drop_backward_autograd(const at::Tensor& grad_y, const at::Tensor& rng_state, double p_drop,
                                        at::ArrayRef<double> alpha_range, at::ArrayRef<double> beta_range,
                                        c10::string_view gate_level, c10::string_view level, bool training,
                                        const std::optional<at::Tensor>& gate,
                                        const std::optional<at::Tensor>& beta) {
  return ShakeDropBackwardFunction::apply(grad_y, rng_state, p_drop, alpha_range, beta_range, gate_level, level,
                                          training, gate, beta)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, Autograd, m) {
  m.impl("shake_drop", &shake_drop_autograd);
  m.impl("_shake_drop_backward", &shake_drop_backward_autograd);
}

}  // namespace cifarops
