#include "args/maxout.h"

#include <ATen/WrapDimUtils.h>
#include <torch/library.h>

#include "args/autograd.h"
#include "args/common.h"
#include "args/rng.h"
#include "args/signatures.h"

namespace cifarops {
namespace {

// Collapses dims [begin, end) of `t` into one (size, stride), ignoring size-1 dims; false if their strides
// do not nest (then no single stride walks them).
bool collapse(const at::Tensor& t, int64_t begin, int64_t end, int64_t& size, int64_t& stride) {
  size = 1;
  stride = 1;
  int64_t expected = -1;
  for (int64_t d = end - 1; d >= begin; --d) {
    if (t.size(d) == 1) continue;
    if (expected < 0) {
      stride = t.stride(d);
    } else if (t.stride(d) != expected) {
      return false;
    }
    expected = t.stride(d) * t.size(d);
    size *= t.size(d);
  }
  return true;
}

// The (outer, dim, inner) view of t, or false.
bool view3(const at::Tensor& t, int64_t dim, int64_t& outer, int64_t& inner, Strides3& s) {
  s.channel = t.stride(dim);
  return collapse(t, 0, dim, outer, s.outer) && collapse(t, dim + 1, t.dim(), inner, s.inner);
}

// channels_last is kept when the input is stored that way and dim is its channel dim (the only dim whose
// outer and inner dims collapse in channels_last); everything else runs on contiguous tensors.
at::MemoryFormat maxout_format(const at::Tensor& t, int64_t dim) {
  const at::MemoryFormat format = dense_format(t);
  return format == at::MemoryFormat::ChannelsLast && dim == 1 ? format : at::MemoryFormat::Contiguous;
}

// torch's Python name of a dtype, as the Python checks print it.
std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kBool: return "torch.bool";
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    default: return std::string("torch.") + c10::toString(type);
  }
}

// The same checks, types and messages as check_args in python/cifarops/ops/maxout.py; returns dim wrapped
// to [0, t.dim()). grouped_input: t holds the k pieces along dim (false for an output-shaped gradient).
int64_t check_args(const at::Tensor& t, const char* name, int64_t pieces, int64_t dim, c10::string_view grouping,
                   const char* op, bool grouped_input) {
  const auto type = t.scalar_type();
  TORCH_CHECK_TYPE(type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16, op, ": ",
                   name, " must be float32, float64, float16 or bfloat16, got ", dtype_name(type));
  TORCH_CHECK_VALUE(pieces >= 1 && pieces <= 255, op,
                    ": pieces must be in [1, 255] (the chosen piece is stored in a byte), got ", pieces);
  TORCH_CHECK_VALUE(t.dim() >= 1, op, ": ", name, " must have at least one dimension");
  TORCH_CHECK_INDEX(dim >= -t.dim() && dim < t.dim(), op, ": dim ", dim, " is out of range for a ", t.dim(),
                    "-dimensional ", name);
  dim = at::maybe_wrap_dim(dim, t.dim());
  TORCH_CHECK_VALUE(grouping == "contiguous" || grouping == "strided", op,
                    ": grouping must be one of ('contiguous', 'strided'), got '", grouping, "'");
  TORCH_CHECK_VALUE(!grouped_input || t.size(dim) % pieces == 0, op, ": ", name, ".shape[", dim, "] = ", t.size(dim),
                    " channels are not divisible by pieces = ", pieces);
  return dim;
}

void check_temperature(double temperature, const char* op) {
  TORCH_CHECK_VALUE(temperature > 0, op, ": temperature must be a positive number, got ", temperature);
}

// Fills the input-side view (in_strides, outer, channels, inner) from a dense tensor.
void set_input_view(MaxoutParams& p, const at::Tensor& dense, int64_t dim) {
  const bool ok = view3(dense, dim, p.outer, p.inner, p.in_strides);
  TORCH_INTERNAL_ASSERT(ok, "cifarops: maxout input view does not collapse");
  p.channels = dense.size(dim);
  p.group_count = p.channels / p.pieces;
  p.by_inner = FastDivider(p.inner);
  p.by_groups = FastDivider(p.group_count);
  p.by_channels = FastDivider(p.channels);
  p.by_pieces = FastDivider(p.pieces);
}

Strides3 output_strides(const at::Tensor& t, int64_t dim) {
  int64_t outer, inner;
  Strides3 s;
  const bool ok = view3(t, dim, outer, inner, s);
  TORCH_INTERNAL_ASSERT(ok, "cifarops: maxout output view does not collapse");
  return s;
}

c10::SmallVector<int64_t, 6> with_size(at::IntArrayRef sizes, int64_t dim, int64_t size) {
  c10::SmallVector<int64_t, 6> out(sizes.begin(), sizes.end());
  out[dim] = size;
  return out;
}

}  // namespace

MaxoutCall maxout_forward_call(const at::Tensor& x, int64_t pieces, int64_t dim, c10::string_view grouping,
                               MaxoutMode mode, double temperature, const std::optional<at::Tensor>& rng_state,
                               const char* op) {
  dim = check_args(x, "x", pieces, dim, grouping, op, true);
  if (mode != MaxoutMode::Max) check_temperature(temperature, op);
  MaxoutCall call;
  if (mode == MaxoutMode::Sample && rng_state.has_value()) {
    check_rng_state(*rng_state, x, "rng_state", op);
    call.explicit_state = rng_state->contiguous();
  }
  const at::MemoryFormat format = maxout_format(x, dim);
  const at::Tensor dense = x.contiguous(format);
  call.keep_alive.push_back(dense);
  const auto out_sizes = with_size(x.sizes(), dim, x.size(dim) / pieces);
  call.output = empty_output(out_sizes, x.options(), format);
  if (mode != MaxoutMode::Expectation) {
    call.index = empty_output(out_sizes, x.options().dtype(at::kByte), format);
  }
  MaxoutParams& p = call.params;
  p.pieces = pieces;
  p.strided_grouping = grouping == "strided";
  p.mode = mode;
  p.inverse_temperature = mode == MaxoutMode::Max ? 1.0 : 1.0 / temperature;
  if (x.numel() == 0) return call;
  set_input_view(p, dense, dim);
  p.input = dense.data_ptr();
  p.output = call.output.data_ptr();
  p.out_strides = output_strides(call.output, dim);
  if (call.index.defined()) p.index = call.index.data_ptr<uint8_t>();
  p.rows_of_four = maxout_rows_of_four(p, x.element_size());
  return call;
}

MaxoutCall maxout_backward_call(const at::Tensor& grad_y, const at::Tensor& index, int64_t pieces, int64_t dim,
                                c10::string_view grouping) {
  constexpr const char* op = "cifarops._maxout_backward";
  dim = check_args(grad_y, "grad_y", pieces, dim, grouping, op, false);
  check_device(index, grad_y, "index", "grad_y", op);
  TORCH_CHECK_TYPE(index.scalar_type() == at::kByte, op, ": index must be uint8, got ", dtype_name(index.scalar_type()));
  TORCH_CHECK_VALUE(index.sizes() == grad_y.sizes(), op, ": index must have grad_y's shape ", grad_y.sizes(), ", got ",
                    index.sizes());
  const at::MemoryFormat format = maxout_format(index, dim);
  MaxoutCall call;
  // grad_y and index are read at the same strides: bring both to one dense layout.
  const at::Tensor dense_grad = grad_y.contiguous(format), dense_index = index.contiguous(format);
  call.keep_alive = {dense_grad, dense_index};
  call.grad_input = empty_output(with_size(grad_y.sizes(), dim, grad_y.size(dim) * pieces), grad_y.options(), format);
  MaxoutParams& p = call.params;
  p.pieces = pieces;
  p.strided_grouping = grouping == "strided";
  if (call.grad_input.numel() == 0) return call;
  set_input_view(p, call.grad_input, dim);
  p.out_strides = output_strides(dense_grad, dim);
  TORCH_INTERNAL_ASSERT(output_strides(dense_index, dim).outer == p.out_strides.outer &&
                        output_strides(dense_index, dim).inner == p.out_strides.inner);
  p.grad_output = dense_grad.data_ptr();
  p.index = dense_index.data_ptr<uint8_t>();
  p.grad_input = call.grad_input.data_ptr();
  return call;
}

MaxoutCall maxout_expectation_backward_call(const at::Tensor& grad_y, const at::Tensor& x, int64_t pieces,
                                            int64_t dim, c10::string_view grouping, double temperature) {
  constexpr const char* op = "cifarops._probabilistic_maxout_expectation_backward";
  dim = check_args(x, "x", pieces, dim, grouping, op, true);
  check_temperature(temperature, op);
  check_device(grad_y, x, "grad_y", "x", op);
  TORCH_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type(), op, ": grad_y must have x's dtype ",
                   dtype_name(x.scalar_type()), ", got ", dtype_name(grad_y.scalar_type()));
  TORCH_CHECK_VALUE(grad_y.sizes() == at::IntArrayRef(with_size(x.sizes(), dim, x.size(dim) / pieces)), op,
                    ": grad_y has shape ", grad_y.sizes(), ", which is not the output shape of x ", x.sizes());
  const at::MemoryFormat format = maxout_format(x, dim);
  MaxoutCall call;
  const at::Tensor dense_x = x.contiguous(format), dense_grad = grad_y.contiguous(format);
  call.keep_alive = {dense_x, dense_grad};
  call.grad_input = empty_output(x.sizes(), x.options(), format);
  MaxoutParams& p = call.params;
  p.pieces = pieces;
  p.strided_grouping = grouping == "strided";
  p.mode = MaxoutMode::Expectation;
  p.inverse_temperature = 1.0 / temperature;
  if (x.numel() == 0) return call;
  set_input_view(p, dense_x, dim);
  TORCH_INTERNAL_ASSERT(output_strides(call.grad_input, dim).inner == p.in_strides.inner);
  p.input = dense_x.data_ptr();
  p.out_strides = output_strides(dense_grad, dim);
  p.grad_output = dense_grad.data_ptr();
  p.grad_input = call.grad_input.data_ptr();
  return call;
}

// ------------------------------------------------------------------------------------------------ autograd
//
// One node per differentiable op, shared by the compiled backends (CPU, CUDA): the forward runs the op below
// autograd through the dispatcher and, when a graph is recorded, saves one byte per output (the chosen piece)
// or the input (the expectation). The index and rng_state outputs carry no gradient (no history, so autograd
// makes no zeros() for them); the backward calls the backward op through the dispatcher.
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

struct Grouping {
  int64_t pieces = 0, dim = 0;
  bool strided = false;
  c10::string_view name() const { return strided ? "strided" : "contiguous"; }
};

Grouping grouping_of(int64_t pieces, int64_t dim, c10::string_view grouping) {
  return Grouping{pieces, dim, grouping == "strided"};
}

// A node saving one tensor (the chosen pieces, or the input) and the grouping.
struct SavedOne : torch::autograd::Node {
  SavedVariable saved;
  Grouping grouping;
  double temperature = 1.0;  // the expectation's

  void release_variables() override { saved.reset_data(); }
};

// maxout and probabilistic maxout in training: the gradient goes to each output's chosen piece.
struct MaxoutBackward final : SavedOne {
  std::string name() const override { return "MaxoutBackward"; }
  variable_list apply(variable_list&& grads) override {
    variable_list out(1);
    if (!grads[0].defined() || !task_should_compute_output(0)) return out;
    const at::Tensor index = saved.unpack();
    BackwardGuard guard;
    out[0] = maxout_backward_op().call(grads[0], index, grouping.pieces, grouping.dim, grouping.name());
    return out;
  }
};

// The expectation's gradient depends on every piece.
struct ExpectationBackward final : SavedOne {
  std::string name() const override { return "ProbabilisticMaxoutExpectationBackward"; }
  variable_list apply(variable_list&& grads) override {
    variable_list out(1);
    if (!grads[0].defined() || !task_should_compute_output(0)) return out;
    const at::Tensor x = saved.unpack();
    out[0] = expectation_backward_op().call(grads[0], x, grouping.pieces, grouping.dim, grouping.name(), temperature);
    return out;
  }
};

// _maxout_backward is linear in grad_y: its gradient gathers each output's chosen piece of grad_grad_x
// (plain ATen ops, themselves differentiable).
struct MaxoutBackwardBackward final : SavedOne {
  std::string name() const override { return "MaxoutBackwardBackward"; }
  variable_list apply(variable_list&& grads) override {
    variable_list out(1);
    const at::Tensor& grad_grad_x = grads[0];
    if (!grad_grad_x.defined() || !task_should_compute_output(0)) return out;
    const at::Tensor index = saved.unpack();
    const int64_t dim = at::maybe_wrap_dim(grouping.dim, grad_grad_x.dim());
    const c10::SymInt groups = grad_grad_x.sym_size(dim) / grouping.pieces;  // symbolic under torch.compile
    const int64_t piece_dim = grouping.strided ? dim : dim + 1;
    const at::Tensor grouped = grouping.strided
                                   ? grad_grad_x.unflatten_symint(dim, {c10::SymInt(grouping.pieces), groups})
                                   : grad_grad_x.unflatten_symint(dim, {groups, c10::SymInt(grouping.pieces)});
    out[0] = grouped.gather(piece_dim, index.to(at::kLong).unsqueeze(piece_dim)).squeeze(piece_dim);
    return out;
  }
};

// The node of a recorded call, next edge `input`, saving `saved` (an input of the call, or an output of it
// that carries no gradient: neither makes a reference cycle).
template <typename NodeT>
NodePtr<NodeT> record(const at::Tensor& input, const at::Tensor& saved, int64_t pieces, int64_t dim,
                                 c10::string_view grouping) {
  auto node = make_node<NodeT>(input);
  node->saved = SavedVariable(saved, /*is_output=*/false);
  node->grouping = grouping_of(pieces, dim, grouping);
  return node;
}

Tensor2 maxout_autograd(const at::Tensor& x, int64_t pieces, int64_t dim, c10::string_view grouping) {
  const bool records = records_grad("cifarops.maxout", x);
  auto [y, index] = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return maxout_op().call(x, pieces, dim, grouping);
  }();
  if (records) set_history(record<MaxoutBackward>(x, index, pieces, dim, grouping), y);
  return {std::move(y), std::move(index)};
}

Tensor3 probabilistic_maxout_autograd(const at::Tensor& x, int64_t pieces, int64_t dim, c10::string_view grouping,
                                      double temperature, const OptTensor& rng_state) {
  const bool records = records_grad("cifarops.probabilistic_maxout", x);
  auto [y, index, state] = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return probabilistic_maxout_op().call(x, pieces, dim, grouping, temperature, rng_state);
  }();
  // The drawn piece is saved: backward needs no noise again.
  if (records) set_history(record<MaxoutBackward>(x, index, pieces, dim, grouping), y);
  return {std::move(y), std::move(index), std::move(state)};
}

at::Tensor probabilistic_maxout_expectation_autograd(const at::Tensor& x, int64_t pieces, int64_t dim,
                                                     c10::string_view grouping, double temperature) {
  const bool records = records_grad("cifarops.probabilistic_maxout", x);
  at::Tensor y = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return expectation_op().call(x, pieces, dim, grouping, temperature);
  }();
  if (records) {
    auto node = record<ExpectationBackward>(x, x, pieces, dim, grouping);
    node->temperature = temperature;
    set_history(node, y);
  }
  return y;
}

at::Tensor maxout_backward_autograd(const at::Tensor& grad_y, const at::Tensor& index, int64_t pieces, int64_t dim,
                                    c10::string_view grouping) {
  const bool records = records_grad("cifarops._maxout_backward", grad_y);
  at::Tensor grad_x = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return maxout_backward_op().call(grad_y, index, pieces, dim, grouping);
  }();
  if (records) set_history(record<MaxoutBackwardBackward>(grad_y, index, pieces, dim, grouping), grad_x);
  return grad_x;
}

}  // namespace

}  // namespace cifarops

TORCH_LIBRARY_IMPL(cifarops, Autograd, m) {
  m.impl("maxout", &cifarops::maxout_autograd);
  m.impl("_maxout_backward", &cifarops::maxout_backward_autograd);
  m.impl("probabilistic_maxout", &cifarops::probabilistic_maxout_autograd);
  m.impl("probabilistic_maxout_expectation", &cifarops::probabilistic_maxout_expectation_autograd);
}
