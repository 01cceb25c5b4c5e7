// ShakeDrop's torch side: argument checks (written once, here; python/cifarops/ops/shake_drop.py has the
// twin for the Triton and fake kernels), the kernel parameters, and the autograd kernel of the compiled ops.
#include "args/shake_drop.h"

#include <torch/library.h>

#include <cmath>

#include "args/autograd.h"
#include "args/common.h"
#include "args/residual_nodes.h"
#include "args/rng.h"
#include "args/signatures.h"

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

void check_floating_noise(const at::Tensor& t, const at::Tensor& h, const char* name, const char* h_name,
                          const char* op = kOp) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating-point tensor, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == h.device(), op, ": ", name, " is on ", t.device(), " but ", h_name, " is on ",
                    h.device());
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

}  // namespace

ShakeDropCall shake_drop_start_call(const at::Tensor& h, at::MemoryFormat format) {
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
  // Without spatial dims ((N, C), or 1 x 1 planes) both layouts are the same memory: walking it as channels_last
  // makes a row the C vector, so that the CUDA kernel moves whole packets along it.
  p.channels_last = format == at::MemoryFormat::ChannelsLast || p.spatial == 1;
  return call;
}

void set_explicit_gate(ShakeDropCall& call, const at::Tensor& h, const at::Tensor& gate, const char* h_name,
                       const char* op) {
  check_floating_noise(gate, h, "gate", h_name, op);
  const int64_t n = h.size(0);
  TORCH_CHECK_VALUE(gate.dim() == 1 && (gate.size(0) == 1 || gate.size(0) == n), op,
                    ": gate must have shape (1,) or (N,) = (", n, ",), got ", gate.sizes());
  const at::Tensor g = gate.to(opmath_type(h));
  call.keep_alive.push_back(g);
  NoiseSource& src = call.params.gate;
  src.kind = Noise::PerChannel;
  src.data = g.data_ptr();
  src.stride_n = g.size(0) == 1 ? 0 : g.stride(0);
}

void check_shortcut(const at::Tensor& h, const std::optional<at::Tensor>& shortcut, const char* op) {
  if (!shortcut.has_value()) return;
  const at::Tensor& x = *shortcut;
  check_nc_input(x, "shortcut", op);
  TORCH_CHECK_VALUE(x.device() == h.device(), op, ": shortcut is on ", x.device(), " but h is on ", h.device());
  TORCH_CHECK_TYPE(x.scalar_type() == h.scalar_type(), op, ": shortcut must have h's dtype ", h.scalar_type(),
                   ", got ", x.scalar_type());
  bool same_other_dims = x.dim() == h.dim() && x.size(0) == h.size(0);
  for (int64_t d = 2; same_other_dims && d < h.dim(); ++d) same_other_dims = x.size(d) == h.size(d);
  TORCH_CHECK_VALUE(same_other_dims, op, ": shortcut must match h in batch and spatial sizes, got ", x.sizes(),
                    " for h ", h.sizes());
  TORCH_CHECK_VALUE(x.size(1) <= h.size(1), op, ": shortcut has ", x.size(1), " channels, more than h's ", h.size(1));
}

void set_shortcut(ShakeDropCall& call, const std::optional<at::Tensor>& shortcut, at::MemoryFormat format) {
  if (!shortcut.has_value()) return;
  at::Tensor dense = shortcut->contiguous(format);
  call.keep_alive.push_back(dense);
  call.params.shortcut = dense.data_ptr();
  call.params.shortcut_channels = dense.size(1);
}

namespace {

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
    set_explicit_gate(call, h, *gate, h_name, kOp);
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
  check_shortcut(h, shortcut, kOp);
  TORCH_CHECK_VALUE(training || !(gate.has_value() || alpha.has_value() || beta.has_value()), kOp,
                    ": gate, alpha and beta are training noise; pass training=True");
  if (beta.has_value()) check_coefficient(h, *beta, "beta", "h");  // checked now, though only backward uses it
  if (rng_state.has_value()) check_rng_state(*rng_state, h, "rng_state", kOp);

  const at::MemoryFormat format = dense_format(h);
  ShakeDropCall call = shake_drop_start_call(h, format);
  set_shortcut(call, shortcut, format);
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
  ShakeDropCall call = shake_drop_start_call(grad_y, format);
  set_noise(call, grad_y, format, p_drop, alpha_range, beta_range, gate_lvl, lvl, training, gate, beta, "beta",
            kShakeDropBetaStream, "grad_y");
  call.state = rng_state;
  call.state_in = rng_state;
  return call;
}

// ------------------------------------------------------------------------------------------------ autograd

namespace {

const char* level_name(Level level) {
  static const char* const kNames[] = {"batch", "sample", "channel", "pixel"};
  return kNames[static_cast<int>(level)];
}

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// What the backward op needs, saved by both nodes below: the state, the explicit gate and beta and the
// hyper-parameters; never h, the shortcut or the output. Tensors as saved variables, as torch's own nodes
// keep them: saved-tensor hooks (checkpointing, offloading) see them, and an in-place change after the forward
// is an error.
struct SavedNoise {
  static constexpr const char* kNode = "ShakeDropBackward";
  static constexpr const char* kBackwardNode = "ShakeDropBackwardBackward";
  SavedVariable state, gate, beta;  // gate and beta: set only when explicit
  double p_drop = 0, alpha_range[2] = {0, 0}, beta_range[2] = {0, 0};
  Level gate_level = Level::Batch, level = Level::Sample;
  bool training = true;

  void save(const at::Tensor& rng_state, const std::optional<at::Tensor>& gate_, const std::optional<at::Tensor>& beta_,
            double p, at::ArrayRef<double> alpha, at::ArrayRef<double> beta_r, c10::string_view gate_lvl,
            c10::string_view lvl, bool train) {
    state = SavedVariable(rng_state, /*is_output=*/false);  // carries no gradient: no reference cycle
    if (gate_.has_value()) gate = SavedVariable(*gate_, /*is_output=*/false);
    if (beta_.has_value()) beta = SavedVariable(*beta_, /*is_output=*/false);
    p_drop = p;
    alpha_range[0] = alpha[0], alpha_range[1] = alpha[1], beta_range[0] = beta_r[0], beta_range[1] = beta_r[1];
    gate_level = parse_level(gate_lvl, /*gate=*/true);
    level = parse_level(lvl, /*gate=*/false);
    training = train;
  }

  void release() {
    state.reset_data();
    gate.reset_data();
    beta.reset_data();
  }

  // grad_h = (b + beta - b * beta) * grad, through the backward op.
  at::Tensor backward(const at::Tensor& grad) {
    // Unpacked before the guard: an unpack hook (a checkpoint's recomputation) records a graph of its own.
    const at::Tensor s = state.unpack();
    const std::optional<at::Tensor> g = unpack_optional(gate), b = unpack_optional(beta);
    BackwardGuard guard;
    return shake_drop_backward_op().call(grad, s, p_drop, alpha_range, beta_range, level_name(gate_level),
                                         level_name(level), training, g, b);
  }
};

std::tuple<at::Tensor, at::Tensor> shake_drop_autograd(
    const at::Tensor& h, const std::optional<at::Tensor>& shortcut, double p_drop, at::ArrayRef<double> alpha_range,
    at::ArrayRef<double> beta_range, c10::string_view gate_level, c10::string_view level, bool training,
    const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& alpha,
    const std::optional<at::Tensor>& beta, const std::optional<at::Tensor>& rng_state) {
  const bool records = records_grad(kOp, h, shortcut);
  auto [out, state] = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return shake_drop_op().call(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, alpha,
                                beta, rng_state);
  }();
  if (records) {
    auto node = make_node<ResidualBackward<SavedNoise>>(h, shortcut);
    node->noise.save(state, gate, beta, p_drop, alpha_range, beta_range, gate_level, level, training);
    node->set_shortcut(h, shortcut);
    set_history(node, out);
  }
  return {std::move(out), std::move(state)};
}

at::Tensor shake_drop_backward_autograd(const at::Tensor& grad_y, const at::Tensor& rng_state, double p_drop,
                                        at::ArrayRef<double> alpha_range, at::ArrayRef<double> beta_range,
                                        c10::string_view gate_level, c10::string_view level, bool training,
                                        const std::optional<at::Tensor>& gate,
                                        const std::optional<at::Tensor>& beta) {
  const bool records = records_grad("cifarops._shake_drop_backward", grad_y);
  at::Tensor grad_h = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return shake_drop_backward_op().call(grad_y, rng_state, p_drop, alpha_range, beta_range, gate_level, level,
                                         training, gate, beta);
  }();
  if (records) {
    auto node = make_node<ResidualBackwardBackward<SavedNoise>>(grad_y);
    node->noise.save(rng_state, gate, beta, p_drop, alpha_range, beta_range, gate_level, level, training);
    set_history(node, grad_h);
  }
  return grad_h;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, Autograd, m) {
  m.impl("shake_drop", &shake_drop_autograd);
  m.impl("_shake_drop_backward", &shake_drop_backward_autograd);
}

}  // namespace cifarops
