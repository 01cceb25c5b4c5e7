// Stochastic pooling's torch side: argument checks (written once, here; python/cifarops/ops/stochastic_pool2d.py
// has the twin for the Triton and fake kernels), the kernel parameters, and the autograd kernels of the compiled
// ops.
#include "args/stochastic_pool2d.h"

#include <torch/library.h>

#include <sstream>
#include <string>

#include "args/autograd.h"
#include "args/rng.h"
#include "args/signatures.h"

namespace cifarops {
namespace {

constexpr const char* kOp = "cifarops.stochastic_pool2d";
constexpr const char* kBackwardOp = "cifarops._stochastic_pool2d_backward";
constexpr const char* kExpectationBackwardOp = "cifarops._stochastic_pool2d_expectation_backward";

std::string pair(int64_t a, int64_t b) {
  std::ostringstream s;
  s << "(" << a << ", " << b << ")";
  return s.str();
}

// A shape as Python prints a tuple, as the twin's messages show it.
std::string shape(at::IntArrayRef sizes) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < sizes.size(); ++i) s << (i ? ", " : "") << sizes[i];
  s << (sizes.size() == 1 ? ",)" : ")");
  return s.str();
}

// The sizes of a call, checked: the same rules and messages as check_pool_args in the Python twin.
struct PoolSizes {
  int64_t kernel[2], stride[2], padding[2], out[2];
};

int64_t output_size(int64_t size, int64_t kernel, int64_t stride, int64_t padding, bool ceil_mode) {
  int64_t out = (size + 2 * padding - kernel + (ceil_mode ? stride - 1 : 0)) / stride + 1;
  if (size + 2 * padding - kernel + (ceil_mode ? stride - 1 : 0) < 0) out = 0;  // C++ division truncates to 0
  if (ceil_mode && (out - 1) * stride >= size + padding) --out;
  return out;
}

constexpr int64_t kMaxStride = (int64_t(1) << 31) - 1;

PoolSizes check_pool_args(int64_t height, int64_t width, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, bool ceil_mode, const char* input_name, const char* op) {
  TORCH_CHECK_VALUE(kernel_size.size() == 2, op, ": kernel_size must be a pair (height, width), got ",
                    kernel_size.size(), " values");
  TORCH_CHECK_VALUE(stride.size() == 2, op, ": stride must be a pair (height, width), got ", stride.size(), " values");
  TORCH_CHECK_VALUE(padding.size() == 2, op, ": padding must be a pair (height, width), got ", padding.size(),
                    " values");
  PoolSizes s;
  for (int d = 0; d < 2; ++d) s.kernel[d] = kernel_size[d], s.stride[d] = stride[d], s.padding[d] = padding[d];
  TORCH_CHECK_VALUE(s.kernel[0] > 0 && s.kernel[1] > 0, op, ": kernel_size must be positive, got ",
                    pair(s.kernel[0], s.kernel[1]));
  // Each side first, so that the product cannot overflow.
  TORCH_CHECK_VALUE(s.kernel[0] <= 255 && s.kernel[1] <= 255 && s.kernel[0] * s.kernel[1] <= 255, op,
                    ": kernel_size ", pair(s.kernel[0], s.kernel[1]),
                    " has more than 255 elements (the drawn offset is stored in a byte)");
  // The kernels hold the sizes in 32-bit ints.
  TORCH_CHECK_VALUE(s.stride[0] > 0 && s.stride[1] > 0 && s.stride[0] <= kMaxStride && s.stride[1] <= kMaxStride, op,
                    ": stride must be positive and below 2^31, got ", pair(s.stride[0], s.stride[1]));
  TORCH_CHECK_VALUE(s.padding[0] >= 0 && s.padding[1] >= 0 && 2 * s.padding[0] <= s.kernel[0] &&
                        2 * s.padding[1] <= s.kernel[1],
                    op, ": padding ", pair(s.padding[0], s.padding[1]),
                    " must be non-negative and at most half of kernel_size ", pair(s.kernel[0], s.kernel[1]));
  TORCH_CHECK_VALUE(height > 0 && width > 0, op, ": ", input_name, " must have a positive spatial size, got ",
                    pair(height, width));
  s.out[0] = output_size(height, s.kernel[0], s.stride[0], s.padding[0], ceil_mode);
  s.out[1] = output_size(width, s.kernel[1], s.stride[1], s.padding[1], ceil_mode);
  TORCH_CHECK_VALUE(s.out[0] > 0 && s.out[1] > 0, op, ": ", input_name, " of spatial size ", pair(height, width),
                    " is too small for kernel_size ", pair(s.kernel[0], s.kernel[1]), " and padding ",
                    pair(s.padding[0], s.padding[1]), ": the output would be ", pair(s.out[0], s.out[1]));
  return s;
}

void check_input(const at::Tensor& t, const char* name, const char* op) {
  check_nc_input(t, name, op);
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": ", name, " must be 4-dimensional (N, C, H, W), got ", t.dim(),
                    " dimensions");
}

void set_sizes(StochasticPoolParams& p, const at::Tensor& in_like, const PoolSizes& s, at::MemoryFormat format,
               int64_t in_h, int64_t in_w) {
  p.batch = in_like.size(0);
  p.channels = in_like.size(1);
  p.in_h = in_h;
  p.in_w = in_w;
  p.out_h = s.out[0];
  p.out_w = s.out[1];
  p.kernel_h = static_cast<int>(s.kernel[0]);
  p.kernel_w = static_cast<int>(s.kernel[1]);
  p.stride_h = static_cast<int>(s.stride[0]);
  p.stride_w = static_cast<int>(s.stride[1]);
  p.pad_h = static_cast<int>(s.padding[0]);
  p.pad_w = static_cast<int>(s.padding[1]);
  p.channels_last = format == at::MemoryFormat::ChannelsLast;
}

}  // namespace

StochasticPoolCall stochastic_pool_forward_call(const at::Tensor& x, at::IntArrayRef kernel_size,
                                                at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                                                const std::optional<at::Tensor>& uniforms,
                                                const std::optional<at::Tensor>& rng_state, bool sample) {
  const char* op = kOp;
  check_input(x, "x", op);
  const PoolSizes s = check_pool_args(x.size(2), x.size(3), kernel_size, stride, padding, ceil_mode, "x", op);
  const c10::SmallVector<int64_t, 4> out_sizes{x.size(0), x.size(1), s.out[0], s.out[1]};
  if (uniforms.has_value()) {
    const at::Tensor& u = *uniforms;
    TORCH_CHECK_TYPE(u.scalar_type() == at::kFloat, op, ": uniforms must be float32 (u in [0, 1)), got ",
                     u.scalar_type());
    check_device(u, x, "uniforms", "x", op);
    TORCH_CHECK_VALUE(u.sizes() == at::IntArrayRef(out_sizes), op, ": uniforms must have the output's shape ",
                      shape(out_sizes), ", got ", shape(u.sizes()));
  }
  if (rng_state.has_value()) check_rng_state(*rng_state, x, "rng_state", op);
  const at::MemoryFormat format = dense_format(x);
  StochasticPoolCall call;
  const at::Tensor dense = x.contiguous(format);
  call.keep_alive.push_back(dense);
  call.out = empty_output(out_sizes, x.options(), format);
  StochasticPoolParams& p = call.params;
  set_sizes(p, x, s, format, x.size(2), x.size(3));
  p.kind = sample ? StochasticPoolKind::Sample : StochasticPoolKind::Expectation;
  p.input = dense.data_ptr();
  p.output = call.out.data_ptr();
  if (sample) {
    call.offset = empty_output(out_sizes, x.options().dtype(at::kByte), format);
    p.offset = call.offset.data_ptr<uint8_t>();
    if (uniforms.has_value()) {
      const at::Tensor u = uniforms->contiguous(format);
      call.keep_alive.push_back(u);
      p.uniforms = u.data_ptr<float>();
    }
    call.draws = !uniforms.has_value();
    call.state_in = rng_state;
  }
  return call;
}

StochasticPoolCall stochastic_pool_backward_call(const at::Tensor& grad_y, const at::Tensor& offset,
                                                 c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                                                 at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode) {
  const char* op = kBackwardOp;
  check_input(grad_y, "grad_y", op);
  TORCH_CHECK_TYPE(offset.scalar_type() == at::kByte, op, ": offset must be uint8, got ", offset.scalar_type());
  check_device(offset, grad_y, "offset", "grad_y", op);
  TORCH_CHECK_VALUE(offset.sizes() == grad_y.sizes(), op, ": offset must have grad_y's shape ", shape(grad_y.sizes()),
                    ", got ", shape(offset.sizes()));
  TORCH_CHECK_VALUE(input_size.size() == 2, op, ": input_size must be a pair (height, width), got ",
                    input_size.size(), " values");
  const int64_t in_h = input_size[0].guard_int(__FILE__, __LINE__), in_w = input_size[1].guard_int(__FILE__, __LINE__);
  const PoolSizes s = check_pool_args(in_h, in_w, kernel_size, stride, padding, ceil_mode, "input_size", op);
  TORCH_CHECK_VALUE(grad_y.size(2) == s.out[0] && grad_y.size(3) == s.out[1], op, ": grad_y's spatial size ",
                    pair(grad_y.size(2), grad_y.size(3)), " is not the output size ", pair(s.out[0], s.out[1]),
                    " of input_size ", pair(in_h, in_w));
  const at::MemoryFormat format = dense_format(offset);
  StochasticPoolCall call;
  const at::Tensor dense_grad = grad_y.contiguous(format), dense_offset = offset.contiguous(format);
  call.keep_alive = {dense_grad, dense_offset};
  call.out = empty_output({grad_y.size(0), grad_y.size(1), in_h, in_w}, grad_y.options(), format);
  StochasticPoolParams& p = call.params;
  set_sizes(p, grad_y, s, format, in_h, in_w);
  p.kind = StochasticPoolKind::SampleBackward;
  p.grad_output = dense_grad.data_ptr();
  p.offset = dense_offset.data_ptr<uint8_t>();
  p.output = call.out.data_ptr();
  return call;
}

StochasticPoolCall stochastic_pool_expectation_backward_call(const at::Tensor& grad_y, const at::Tensor& x,
                                                             at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                             at::IntArrayRef padding, bool ceil_mode) {
  const char* op = kExpectationBackwardOp;
  check_input(x, "x", op);
  const PoolSizes s = check_pool_args(x.size(2), x.size(3), kernel_size, stride, padding, ceil_mode, "x", op);
  check_device(grad_y, x, "grad_y", "x", op);
  TORCH_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type(), op, ": grad_y must have x's dtype ", x.scalar_type(),
                   ", got ", grad_y.scalar_type());
  const c10::SmallVector<int64_t, 4> out_sizes{x.size(0), x.size(1), s.out[0], s.out[1]};
  TORCH_CHECK_VALUE(grad_y.sizes() == at::IntArrayRef(out_sizes), op, ": grad_y must have the output's shape ",
                    shape(out_sizes), ", got ", shape(grad_y.sizes()));
  const at::MemoryFormat format = dense_format(x);
  StochasticPoolCall call;
  const at::Tensor dense_x = x.contiguous(format), dense_grad = grad_y.contiguous(format);
  call.keep_alive = {dense_x, dense_grad};
  call.out = empty_output(x.sizes(), x.options(), format);
  StochasticPoolParams& p = call.params;
  set_sizes(p, x, s, format, x.size(2), x.size(3));
  p.kind = StochasticPoolKind::ExpectationBackward;
  p.input = dense_x.data_ptr();
  p.grad_output = dense_grad.data_ptr();
  p.output = call.out.data_ptr();
  return call;
}

at::Tensor stochastic_pool_select(const at::Tensor& values, const at::Tensor& offset, at::IntArrayRef kernel_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding) {
  const int64_t kh = kernel_size[0], kw = kernel_size[1], sh = stride[0], sw = stride[1];
  // Padded by a whole kernel on the far sides, which every window fits into (ceil mode's last window starts
  // inside the input or its near padding), so that no size here depends on the (possibly symbolic) input size.
  const at::Tensor padded = at::constant_pad_nd(values, {padding[1], kw, padding[0], kh}, 0);
  const c10::SymInt oh = offset.sym_size(2), ow = offset.sym_size(3);
  at::Tensor y = at::zeros_symint(offset.sym_sizes(), values.options());
  for (int64_t i = 0; i < kh * kw; ++i) {
    const int64_t r = i / kw, c = i % kw;
    const at::Tensor window = padded.slice_symint(2, r, (oh - 1) * sh + r + 1, sh).slice_symint(3, c, (ow - 1) * sw + c + 1, sw);
    y = at::where(offset == i, window, y);
  }
  return y;
}

// ------------------------------------------------------------------------------------------------ autograd
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

struct PoolArgs {
  int64_t kernel[2], stride[2], padding[2];
  bool ceil_mode = false;

  PoolArgs() = default;
  PoolArgs(at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, bool ceil) : ceil_mode(ceil) {
    for (int d = 0; d < 2; ++d) kernel[d] = k[d], stride[d] = s[d], padding[d] = p[d];
  }
  at::IntArrayRef k() const { return at::IntArrayRef(kernel, 2); }
  at::IntArrayRef s() const { return at::IntArrayRef(stride, 2); }
  at::IntArrayRef p() const { return at::IntArrayRef(padding, 2); }
};

// A node saving one tensor (the drawn offsets, or x for the expectation) and the pooling's sizes.
struct PoolNode : torch::autograd::Node {
  SavedVariable saved;
  PoolArgs args;
  c10::SmallVector<c10::SymInt, 2> input_size;

  void release_variables() override { saved.reset_data(); }
};

// Training: the gradient goes to each output's drawn element.
struct StochasticPoolBackward final : PoolNode {
  std::string name() const override { return "StochasticPool2dBackward"; }
  variable_list apply(variable_list&& grads) override {
    variable_list out(1);
    if (!grads[0].defined() || !task_should_compute_output(0)) return out;
    const at::Tensor offset = saved.unpack();
    BackwardGuard guard;
    out[0] = stochastic_pool_backward_op().call(grads[0], offset, input_size, args.k(), args.s(), args.p(),
                                                args.ceil_mode);
    return out;
  }
};

// The backward is linear in grad_y: its gradient selects each output's drawn element of grad_grad_x.
struct StochasticPoolBackwardBackward final : PoolNode {
  std::string name() const override { return "StochasticPool2dBackwardBackward"; }
  variable_list apply(variable_list&& grads) override {
    variable_list out(1);
    if (!grads[0].defined() || !task_should_compute_output(0)) return out;
    out[0] = stochastic_pool_select(grads[0], saved.unpack(), args.k(), args.s(), args.p());
    return out;
  }
};

// Evaluation: the gradient depends on every element of the region (x is saved). Its own backward (a second
// derivative of the expectation) is not provided: stochastic_pool_expectation_backward_autograd says so.
struct StochasticPoolExpectationBackward final : PoolNode {
  std::string name() const override { return "StochasticPool2dExpectationBackward"; }
  variable_list apply(variable_list&& grads) override {
    variable_list out(1);
    if (!grads[0].defined() || !task_should_compute_output(0)) return out;
    const at::Tensor x = saved.unpack();
    BackwardGuard guard;
    out[0] = stochastic_pool_expectation_backward_op().call(grads[0], x, args.k(), args.s(), args.p(),
                                                            args.ceil_mode);
    return out;
  }
};

template <typename NodeT>
NodePtr<NodeT> record(const at::Tensor& input, const at::Tensor& saved, const PoolArgs& args) {
  auto node = make_node<NodeT>(input);
  node->saved = SavedVariable(saved, /*is_output=*/false);
  node->args = args;
  return node;
}

Tensor3 stochastic_pool_autograd(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, bool ceil_mode, const OptTensor& uniforms,
                                 const OptTensor& rng_state) {
  const bool records = records_grad(kOp, x);
  auto [y, offset, state] = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return stochastic_pool_op().call(x, kernel_size, stride, padding, ceil_mode, uniforms, rng_state);
  }();
  if (records) {
    // The drawn offsets (one byte per output, an output without history) are all the backward needs.
    auto node = record<StochasticPoolBackward>(x, offset, PoolArgs(kernel_size, stride, padding, ceil_mode));
    node->input_size = {x.sym_size(2), x.sym_size(3)};
    set_history(node, y);
  }
  return {std::move(y), std::move(offset), std::move(state)};
}

at::Tensor stochastic_pool_backward_autograd(const at::Tensor& grad_y, const at::Tensor& offset,
                                             c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                                             at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode) {
  const bool records = records_grad(kBackwardOp, grad_y);
  at::Tensor grad_x = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return stochastic_pool_backward_op().call(grad_y, offset, input_size, kernel_size, stride, padding, ceil_mode);
  }();
  if (records) {
    set_history(record<StochasticPoolBackwardBackward>(grad_y, offset,
                                                       PoolArgs(kernel_size, stride, padding, ceil_mode)),
                grad_x);
  }
  return grad_x;
}

at::Tensor stochastic_pool_expectation_autograd(const at::Tensor& x, at::IntArrayRef kernel_size,
                                                at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode) {
  const bool records = records_grad(kOp, x);
  at::Tensor y = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return stochastic_pool_expectation_op().call(x, kernel_size, stride, padding, ceil_mode);
  }();
  if (records) {
    set_history(record<StochasticPoolExpectationBackward>(x, x, PoolArgs(kernel_size, stride, padding, ceil_mode)), y);
  }
  return y;
}

// Evaluation's second derivative is not provided: its backward's node raises when it is differentiated, as
// torch's once_differentiable does, never a silent None (what torch's fallback gives an op without an Autograd
// kernel). The first derivative with create_graph=True works.
struct StochasticPoolExpectationBackwardBackward final : torch::autograd::Node {
  std::string name() const override { return "StochasticPool2dExpectationBackwardBackward"; }
  variable_list apply(variable_list&& grads) override {
    TORCH_CHECK_NOT_IMPLEMENTED(false, kOp, ": the second derivative of evaluation's weighting (double backward "
                                "through training=False) is not implemented; the training form has one");
    return variable_list(2);
  }
};

at::Tensor stochastic_pool_expectation_backward_autograd(const at::Tensor& grad_y, const at::Tensor& x,
                                                         at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                         at::IntArrayRef padding, bool ceil_mode) {
  const bool records = records_grad(kExpectationBackwardOp, grad_y, x);
  at::Tensor grad_x = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return stochastic_pool_expectation_backward_op().call(grad_y, x, kernel_size, stride, padding, ceil_mode);
  }();
  if (records) set_history(make_node<StochasticPoolExpectationBackwardBackward>(grad_y, x), grad_x);
  return grad_x;
}

}  // namespace

}  // namespace cifarops

TORCH_LIBRARY_IMPL(cifarops, Autograd, m) {
  m.impl("stochastic_pool2d", &cifarops::stochastic_pool_autograd);
  m.impl("_stochastic_pool2d_backward", &cifarops::stochastic_pool_backward_autograd);
  m.impl("stochastic_pool2d_expectation", &cifarops::stochastic_pool_expectation_autograd);
  m.impl("_stochastic_pool2d_expectation_backward", &cifarops::stochastic_pool_expectation_backward_autograd);
}
