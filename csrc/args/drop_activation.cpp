// Drop-Activation's torch side: argument checks (written once, here; python/cifarops/ops/drop_activation.py has
// the twin for the Triton and fake kernels), the kernel parameters, and the autograd kernel of the compiled ops.
#include "args/drop_activation.h"

#include <torch/library.h>

#include <ATen/MemoryOverlap.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>

#include "args/autograd.h"
#include "args/rng.h"
#include "args/signatures.h"

namespace cifarops {
namespace {

constexpr const char* kOp = "cifarops.drop_activation";
constexpr const char* kInplaceOp = "cifarops.drop_activation_";
constexpr const char* kBackwardOp = "cifarops._drop_activation_backward";

void check_keep(double keep, const char* op) {
  TORCH_CHECK_VALUE(keep >= 0.0 && keep <= 1.0, op, ": keep must be a number in [0, 1], got ", keep);
}

// Shared by both directions: `in` made dense, the output allocated (in place: `in` itself when it is dense, else a
// dense copy that the backend copies back, DropActivationCall::into), the sizes and the mask's source.
DropActivationCall start_call(const at::Tensor& in, double keep, bool training, const std::optional<at::Tensor>& mask,
                              const char* in_name, const char* op, bool in_place = false) {
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK_VALUE(training, op, ": mask is training noise; pass training=True");
    TORCH_CHECK_TYPE(m.scalar_type() == at::kBool, op, ": mask must be a bool tensor (True keeps the ReLU), got ",
                     m.scalar_type());
    TORCH_CHECK_VALUE(m.device() == in.device(), op, ": mask is on ", m.device(), " but ", in_name, " is on ",
                      in.device());
    TORCH_CHECK_VALUE(m.sizes() == in.sizes(), op, ": mask must have ", in_name, "'s shape ", in.sizes(), ", got ",
                      m.sizes());
  }
  const at::MemoryFormat format = dense_format(in);
  DropActivationCall call;
  const at::Tensor dense = in.contiguous(format);
  call.keep_alive.push_back(dense);
  if (in_place && dense.is_same(in)) {
    call.out = dense;  // the kernel reads each element before it writes it, at the same index
  } else {
    call.out = empty_output_like(dense, format);
    if (in_place) call.into = in;
  }
  DropActivationParams& p = call.params;
  p.in = dense.data_ptr();
  p.out = call.out.data_ptr();
  p.batch = in.size(0);
  p.channels = in.size(1);
  p.spatial = in.numel() == 0 ? 0 : in.numel() / (in.size(0) * in.size(1));
  p.channels_last = format == at::MemoryFormat::ChannelsLast;
  p.training = training;
  p.keep = static_cast<float>(keep);
  p.slope = 1.0 - keep;
  if (mask.has_value()) {
    const at::Tensor bits = mask->contiguous(format);  // a bool is one byte, 0 or 1
    call.keep_alive.push_back(bits);
    p.mask = reinterpret_cast<const uint8_t*>(bits.data_ptr<bool>());
  }
  call.draws = training && !mask.has_value();
  return call;
}

}  // namespace

DropActivationCall drop_activation_forward_call(const at::Tensor& x, double keep, bool training,
                                                const std::optional<at::Tensor>& mask,
                                                const std::optional<at::Tensor>& rng_state) {
  check_keep(keep, kOp);
  check_nc_input(x, "x", kOp);
  if (rng_state.has_value()) check_rng_state(*rng_state, x, "rng_state", kOp);
  DropActivationCall call = start_call(x, keep, training, mask, "x", kOp);
  call.state_in = rng_state;
  return call;
}

DropActivationCall drop_activation_inplace_call(const at::Tensor& x, double keep, bool training,
                                                const std::optional<at::Tensor>& mask,
                                                const std::optional<at::Tensor>& rng_state) {
  check_keep(keep, kInplaceOp);
  check_nc_input(x, "x", kInplaceOp);
  TORCH_CHECK_VALUE(at::has_internal_overlap(x) != at::MemOverlap::Yes, kInplaceOp,
                    ": x has elements that share memory (an expanded tensor); the in-place form cannot write it");
  if (rng_state.has_value()) check_rng_state(*rng_state, x, "rng_state", kInplaceOp);
  DropActivationCall call = start_call(x, keep, training, mask, "x", kInplaceOp, /*in_place=*/true);
  call.state_in = rng_state;
  return call;
}

DropActivationCall drop_activation_backward_call(const at::Tensor& grad_y, const at::Tensor& y,
                                                 const at::Tensor& rng_state, double keep, bool training,
                                                 const std::optional<at::Tensor>& mask) {
  check_keep(keep, kBackwardOp);
  check_nc_input(grad_y, "grad_y", kBackwardOp);
  TORCH_CHECK_TYPE(y.scalar_type() == grad_y.scalar_type(), kBackwardOp, ": y must have grad_y's dtype ",
                   grad_y.scalar_type(), ", got ", y.scalar_type());
  TORCH_CHECK_VALUE(y.sizes() == grad_y.sizes() && y.device() == grad_y.device(), kBackwardOp,
                    ": y must have grad_y's shape ", grad_y.sizes(), " and device ", grad_y.device(), ", got ",
                    y.sizes(), " on ", y.device());
  check_rng_state(rng_state, grad_y, "rng_state", kBackwardOp);
  DropActivationCall call = start_call(grad_y, keep, training, mask, "grad_y", kBackwardOp);
  const at::Tensor dense_y = y.contiguous(dense_format(grad_y));
  call.keep_alive.push_back(dense_y);
  call.params.y = dense_y.data_ptr();
  call.state = rng_state;
  call.state_in = rng_state;
  return call;
}

// ------------------------------------------------------------------------------------------------ autograd

namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// The node of a call (DropActivationBackward) and of its backward (DropActivationBackwardBackward): the backward
// op is linear in grad_y with coefficients that are piecewise constant in y, so its gradient to grad_y is itself
// and to y zero (as torch's threshold_backward). Both nodes save the output (which the backward reads instead of
// x), the state and an explicit mask, and differentiate their first input alone.
template <bool kOfBackward>
struct DropActivationNode final : torch::autograd::Node {
  SavedVariable y, state, mask;
  double keep = 0.95;
  bool training = true;

  std::string name() const override {
    return kOfBackward ? "DropActivationBackwardBackward" : "DropActivationBackward";
  }
  void release_variables() override {
    y.reset_data();
    state.reset_data();
    mask.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    variable_list result(kOfBackward ? 2 : 1);
    if (!grads[0].defined() || !task_should_compute_output(0)) return result;
    // Unpacked before the guard: an unpack hook (a checkpoint's recomputation) records a graph of its own.
    const at::Tensor out = y.unpack(), s = state.unpack();
    const std::optional<at::Tensor> m = unpack_optional(mask);
    BackwardGuard guard;
    result[0] = drop_activation_backward_op().call(grads[0], out, s, keep, training, m);
    return result;
  }
};
using DropActivationBackward = DropActivationNode<false>;
using DropActivationBackwardBackward = DropActivationNode<true>;

template <typename NodeT>
void save_call(NodeT& node, double keep, bool training, const at::Tensor& state, const std::optional<at::Tensor>& mask) {
  node.keep = keep;
  node.training = training;
  node.state = SavedVariable(state, /*is_output=*/false);
  if (mask.has_value()) node.mask = SavedVariable(*mask, /*is_output=*/false);
}

at::Tensor drop_activation_backward_autograd(const at::Tensor& grad_y, const at::Tensor& y,
                                             const at::Tensor& rng_state, double keep, bool training,
                                             const std::optional<at::Tensor>& mask) {
  const bool records = records_grad(kBackwardOp, grad_y, y);
  at::Tensor grad_x = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return drop_activation_backward_op().call(grad_y, y, rng_state, keep, training, mask);
  }();
  if (records) {
    auto node = make_node<DropActivationBackwardBackward>(grad_y, y);
    save_call(*node, keep, training, rng_state, mask);
    node->y = SavedVariable(y, /*is_output=*/false);
    set_history(node, grad_x);
  }
  return grad_x;
}

std::tuple<at::Tensor, at::Tensor> drop_activation_autograd(const at::Tensor& x, double keep, bool training,
                                                            const std::optional<at::Tensor>& mask,
                                                            const std::optional<at::Tensor>& rng_state) {
  const bool records = records_grad(kOp, x);
  auto [out, state] = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return drop_activation_op().call(x, keep, training, mask, rng_state);
  }();
  if (records) {
    auto node = make_node<DropActivationBackward>(x);
    save_call(*node, keep, training, state, mask);
    // The output without its history (the same storage and version counter): saving `out` itself would make the
    // node own a tensor whose grad_fn is the node. An in-place change of y before backward is still an error.
    node->y = SavedVariable(out.detach(), /*is_output=*/false);
    set_history(node, out);
  }
  return {std::move(out), std::move(state)};
}

// The in-place form, as torch's generated relu_: checks that x may be overwritten, runs the op below autograd,
// bumps x's version (a tensor saved by an earlier node is now stale, and its backward says so) and makes the node
// x's new history, saving x, now the output.
at::Tensor drop_activation_inplace_autograd(at::Tensor& x, double keep, bool training,
                                            const std::optional<at::Tensor>& mask,
                                            const std::optional<at::Tensor>& rng_state) {
  const bool records = records_grad(kInplaceOp, x);
  torch::autograd::check_inplace(x, records);
  at::Tensor state = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return drop_activation_inplace_op().call(x, keep, training, mask, rng_state);
  }();
  torch::autograd::increment_version(x);
  if (records) {
    auto node = make_node<DropActivationBackward>(x);
    save_call(*node, keep, training, state, mask);
    torch::autograd::rebase_history(x, node);
    node->y = SavedVariable(x.detach(), /*is_output=*/false);  // as the out-of-place form saves y
  }
  return state;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, Autograd, m) {
  m.impl("drop_activation", &drop_activation_autograd);
  m.impl("drop_activation_", &drop_activation_inplace_autograd);
  m.impl("_drop_activation_backward", &drop_activation_backward_autograd);
}

}  // namespace cifarops
