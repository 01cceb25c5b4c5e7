#include "args/shake_shake.h"

#include <torch/library.h>

#include <sstream>
#include <string>

#include "args/autograd.h"
#include "args/common.h"
#include "args/rng.h"
#include "args/signatures.h"

namespace cifarops {
namespace {

constexpr const char* kOp = "cifarops.shake_shake";
constexpr const char* kBackwardOp = "cifarops._shake_shake_backward";

// Shapes and choices as Python writes them, so that the messages match python/cifarops/ops/shake_shake.py.
std::string py_shape(at::IntArrayRef sizes) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << (sizes.size() == 1 ? ",)" : ")");
  return out.str();
}

void check_choice(c10::string_view value, const char* name, std::initializer_list<const char*> choices,
                  const char* op) {
  for (const char* choice : choices) {
    if (value == choice) return;
  }
  std::ostringstream list;  // only on failure: the message as Python writes the tuple
  list << "(";
  size_t i = 0;
  for (const char* choice : choices) list << (i++ ? ", " : "") << "'" << choice << "'";
  list << ")";
  TORCH_CHECK_VALUE(false, op, ": ", name, " must be one of ", list.str(), ", got '", std::string(value), "'");
}

bool is_floating(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_input(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK_TYPE(is_floating(t.scalar_type()), op, ": ", name, " must be float32, float64, float16 or bfloat16, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() >= 2, op, ": ", name, " must have at least 2 dimensions (N, C, ...), got shape ",
                    py_shape(t.sizes()));
}

void check_like_h1(const at::Tensor& t, const at::Tensor& h1, const char* name) {
  check_input(t, name, kOp);
  check_device(t, h1, name, "h1", kOp);
  TORCH_CHECK_TYPE(t.scalar_type() == h1.scalar_type(), kOp, ": ", name, " must have h1's dtype ", h1.scalar_type(),
                   ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == h1.sizes(), kOp, ": ", name, " must have h1's shape ", py_shape(h1.sizes()), ", got ",
                    py_shape(t.sizes()));
}

// An explicit coefficient: (1,) or (N,) of any floating dtype, on the input's device.
void check_coefficient(const at::Tensor& coef, const at::Tensor& input, const char* name, const char* ref_name,
                       const char* op) {
  TORCH_CHECK_TYPE(at::isFloatingType(coef.scalar_type()), op, ": ", name, " must be a floating-point tensor, got ",
                   coef.scalar_type());
  check_device(coef, input, name, ref_name, op);
  const int64_t n = input.size(0);
  TORCH_CHECK_VALUE(coef.dim() == 1 && (coef.size(0) == 1 || coef.size(0) == n), op, ": ", name,
                    " must have shape (1,) or (N,) = (", n, ",), got ", py_shape(coef.sizes()));
}

// The explicit coefficient in the compute type, kept alive by the call; stride 0 for one value.
ShakeShakeCoef explicit_coef(ShakeShakeCall& call, const at::Tensor& coef, const at::Tensor& input) {
  at::Tensor converted = coef.to(opmath_type(input));
  call.keep_alive.push_back(converted);
  ShakeShakeCoef c;
  c.data = converted.data_ptr();
  c.stride = converted.size(0) == 1 ? 0 : converted.stride(0);
  return c;
}

ShakeShakeCoef drawn_coef(uint32_t stream, c10::string_view level) {
  ShakeShakeCoef c;
  c.stream = static_cast<int32_t>(stream);
  c.per_sample = level == "sample";
  return c;
}

// Fills the fields shared by both directions; `a` is h1 (forward) or grad_y (backward).
void start_call(ShakeShakeCall& call, const at::Tensor& a, at::MemoryFormat format) {
  at::Tensor dense = a.contiguous(format);
  call.out0 = empty_output_like(dense, format);
  ShakeShakeParams& p = call.params;
  p.a = dense.data_ptr();
  p.out0 = call.out0.data_ptr();
  p.batch = a.size(0);
  p.sample_size = a.size(0) == 0 ? 0 : a.numel() / a.size(0);
  call.keep_alive.push_back(std::move(dense));
}

const void* dense_pointer(ShakeShakeCall& call, const at::Tensor& t, at::MemoryFormat format) {
  at::Tensor dense = t.contiguous(format);
  const void* ptr = dense.data_ptr();
  call.keep_alive.push_back(std::move(dense));
  return ptr;
}

}  // namespace

ShakeShakeCall shake_shake_forward_call(const at::Tensor& h1, const at::Tensor& h2,
                                        const std::optional<at::Tensor>& shortcut, c10::string_view forward_mode,
                                        c10::string_view backward_mode, c10::string_view level, bool training,
                                        const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& beta,
                                        const std::optional<at::Tensor>& rng_state) {
  check_choice(forward_mode, "forward_mode", {"shake", "even"}, kOp);
  check_choice(backward_mode, "backward_mode", {"shake", "even", "keep"}, kOp);
  check_choice(level, "level", {"batch", "sample"}, kOp);
  check_input(h1, "h1", kOp);
  check_like_h1(h2, h1, "h2");
  if (shortcut.has_value()) check_like_h1(*shortcut, h1, "shortcut");
  if (alpha.has_value()) check_coefficient(*alpha, h1, "alpha", "h1", kOp);
  if (beta.has_value()) check_coefficient(*beta, h1, "beta", "h1", kOp);
  TORCH_CHECK_VALUE(training || (!alpha.has_value() && !beta.has_value()), kOp,
                    ": alpha and beta are training noise; pass training=True");
  if (rng_state.has_value()) check_rng_state(*rng_state, h1, "rng_state", kOp);

  ShakeShakeCall call;
  const at::MemoryFormat format = dense_format(h1);
  start_call(call, h1, format);
  ShakeShakeParams& p = call.params;
  p.b = dense_pointer(call, h2, format);
  if (shortcut.has_value()) p.c = dense_pointer(call, *shortcut, format);
  if (alpha.has_value()) {
    p.coef = explicit_coef(call, *alpha, h1);
  } else if (training && forward_mode == "shake") {
    p.coef = drawn_coef(kShakeShakeAlphaStream, level);
  }  // else the constant 0.5
  const bool beta_draws = training && !beta.has_value() &&
                          (backward_mode == "shake" || (backward_mode == "keep" && p.coef.draws()));
  call.draws = p.coef.draws() || beta_draws;
  call.state = empty_state(h1);
  return call;
}

ShakeShakeCall shake_shake_backward_call(const at::Tensor& grad_y, const at::Tensor& rng_state,
                                         const std::optional<at::Tensor>& beta, c10::string_view backward_mode,
                                         c10::string_view level) {
  check_choice(backward_mode, "backward_mode", {"shake", "even", "keep"}, kBackwardOp);
  check_choice(level, "level", {"batch", "sample"}, kBackwardOp);
  check_input(grad_y, "grad_y", kBackwardOp);
  check_rng_state(rng_state, grad_y, "rng_state", kBackwardOp);
  if (beta.has_value()) check_coefficient(*beta, grad_y, "beta", "grad_y", kBackwardOp);

  ShakeShakeCall call;
  const at::MemoryFormat format = dense_format(grad_y);
  start_call(call, grad_y, format);
  call.out1 = empty_output_like(call.out0, format);
  ShakeShakeParams& p = call.params;
  p.out1 = call.out1.data_ptr();
  if (beta.has_value()) {
    p.coef = explicit_coef(call, *beta, grad_y);
  } else if (backward_mode == "shake") {
    p.coef = drawn_coef(kShakeShakeBetaStream, level);
  } else if (backward_mode == "keep") {
    p.coef = drawn_coef(kShakeShakeAlphaStream, level);
  }
  call.draws = p.coef.draws();
  return call;
}

// --------------------------------------------------------------------------------------------- autograd

namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// The backward's mode and level, and whether there is a shortcut, packed into one saved int.
constexpr int64_t kHasShortcut = 8;
int64_t flags(c10::string_view mode, c10::string_view level, bool has_shortcut) {
  const int64_t m = mode == "shake" ? 0 : mode == "keep" ? 1 : 2;
  return m | (level == "batch" ? 4 : 0) | (has_shortcut ? kHasShortcut : 0);
}
c10::string_view mode_of(int64_t f) {
  static constexpr const char* kModes[] = {"shake", "keep", "even"};
  return kModes[f & 3];
}
c10::string_view level_of(int64_t f) { return (f & 4) ? "batch" : "sample"; }

// Where the backward's beta comes from, decided once in the forward: an explicit tensor (beta, or alpha for
// "keep"), else a mode for _shake_shake_backward ("shake", "keep": the drawn alpha, "even").
const char* beta_source(c10::string_view forward_mode, c10::string_view backward_mode, bool training,
                        const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& beta,
                        std::optional<at::Tensor>& explicit_beta) {
  if (!training) return "even";
  if (beta.has_value()) {
    explicit_beta = beta;
    return "even";
  }
  if (backward_mode == "keep") {
    if (alpha.has_value()) {
      explicit_beta = alpha;
      return "even";
    }
    return forward_mode == "shake" ? "keep" : "even";
  }
  return backward_mode == "shake" ? "shake" : "even";
}

// What both nodes save: the state, an explicit beta and the flags; never h1, h2 or the shortcut. Tensors as
// saved variables, as torch's own nodes keep them: saved-tensor hooks (checkpointing, offloading) see them,
// and an in-place change after the forward is an error.
struct SavedMix {
  SavedVariable state, beta;  // beta: set only when explicit
  int64_t flags = 0;

  void save(const at::Tensor& rng_state, const OptTensor& explicit_beta, int64_t f) {
    state = SavedVariable(rng_state, /*is_output=*/false);  // carries no gradient: no reference cycle
    if (explicit_beta.has_value()) beta = SavedVariable(*explicit_beta, /*is_output=*/false);
    flags = f;
  }
  void release() {
    state.reset_data();
    beta.reset_data();
  }
};

// The node of a training call; its next edges are h1, h2 and the shortcut.
struct ShakeShakeBackward final : torch::autograd::Node {
  SavedMix saved;

  std::string name() const override { return "ShakeShakeBackward"; }
  void release_variables() override { saved.release(); }

  variable_list apply(variable_list&& grads) override {
    variable_list out(3);
    const at::Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return out;
    if (task_should_compute_output(0) || task_should_compute_output(1)) {
      // Unpacked before the guard: an unpack hook (a checkpoint's recomputation) records a graph of its own.
      const at::Tensor state = saved.state.unpack();
      const OptTensor beta = unpack_optional(saved.beta);
      BackwardGuard guard;
      std::tie(out[0], out[1]) =
          shake_shake_backward_op().call(grad_y, state, beta, mode_of(saved.flags), level_of(saved.flags));
    }
    if ((saved.flags & kHasShortcut) && task_should_compute_output(2)) out[2] = grad_y;  // dL/dx = dL/dy, no copy
    return out;
  }
};

// The backward op is linear in grad_y: its gradient is the forward mix with beta as alpha. A drawn beta is
// the forward op's alpha under a state whose stream 0 is beta's stream (stream 1 = stream 0 at offset + 4).
struct ShakeShakeBackwardBackward final : torch::autograd::Node {
  SavedMix saved;

  std::string name() const override { return "ShakeShakeBackwardBackward"; }
  void release_variables() override { saved.release(); }

  variable_list apply(variable_list&& grads) override {
    const at::Tensor& gg1 = grads[0];
    const at::Tensor& gg2 = grads[1];
    variable_list out(1);
    if ((!gg1.defined() && !gg2.defined()) || !task_should_compute_output(0)) return out;
    const OptTensor beta = unpack_optional(saved.beta);
    const c10::string_view mode = mode_of(saved.flags), level = level_of(saved.flags);
    const at::Tensor a = gg1.defined() ? gg1 : at::zeros_like(gg2);
    const at::Tensor b = gg2.defined() ? gg2 : at::zeros_like(gg1);
    OptTensor alpha_state;
    const char* forward_mode = "even";
    if (!beta.has_value() && mode != "even") {
      forward_mode = "shake";
      if (mode == "keep") {
        alpha_state = saved.state.unpack();
      } else {
        at::Tensor shifted = saved.state.unpack().clone();
        shifted.narrow(0, 1, 1).add_(4 * kShakeShakeBetaStream);
        alpha_state = shifted;
      }
    }
    out[0] = std::get<0>(shake_shake_op().call(a, b, std::nullopt, forward_mode, "even", level, true, beta,
                                               std::nullopt, alpha_state));
    return out;
  }
};

Tensor2 shake_shake_autograd(const at::Tensor& h1, const at::Tensor& h2, const OptTensor& shortcut,
                             c10::string_view forward_mode, c10::string_view backward_mode, c10::string_view level,
                             bool training, const OptTensor& alpha, const OptTensor& beta, const OptTensor& rng_state) {
  const bool records = records_grad(kOp, h1, h2, shortcut);
  auto [y, state] = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return shake_shake_op().call(h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta,
                                 rng_state);
  }();
  if (records) {
    auto node = make_node<ShakeShakeBackward>(h1, h2, shortcut);
    OptTensor explicit_beta;
    const char* mode = beta_source(forward_mode, backward_mode, training, alpha, beta, explicit_beta);
    node->saved.save(state, explicit_beta, flags(mode, level, shortcut.has_value()));
    set_history(node, y);
  }
  return {std::move(y), std::move(state)};
}

Tensor2 shake_shake_backward_autograd(const at::Tensor& grad_y, const at::Tensor& rng_state, const OptTensor& beta,
                                      c10::string_view backward_mode, c10::string_view level) {
  const bool records = records_grad("cifarops._shake_shake_backward", grad_y);
  auto [grad_h1, grad_h2] = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return shake_shake_backward_op().call(grad_y, rng_state, beta, backward_mode, level);
  }();
  if (records) {
    auto node = make_node<ShakeShakeBackwardBackward>(grad_y);
    node->saved.save(rng_state, beta, flags(backward_mode, level, false));
    set_history(node, grad_h1, grad_h2);
  }
  return {std::move(grad_h1), std::move(grad_h2)};
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, Autograd, m) {
  m.impl("shake_shake", &shake_shake_autograd);
  m.impl("_shake_shake_backward", &shake_shake_backward_autograd);
}

}  // namespace cifarops
