#include "args/maxout.h"

#include <ATen/WrapDimUtils.h>

#include "args/common.h"

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

int64_t check_grouping(const at::Tensor& x, int64_t pieces, int64_t& dim, const std::string& grouping,
                       const char* op) {
  TORCH_CHECK(pieces >= 1 && pieces <= 255, op, ": pieces must be in [1, 255], got ", pieces);
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension");
  TORCH_CHECK(dim >= -x.dim() && dim < x.dim(), op, ": dim ", dim, " is out of range for a ", x.dim(),
              "-dimensional x");
  dim = at::maybe_wrap_dim(dim, x.dim());
  TORCH_CHECK(grouping == "contiguous" || grouping == "strided", op,
              ": grouping must be 'contiguous' or 'strided', got '", grouping, "'");
  return dim;
}

void check_floating(const at::Tensor& t, const char* name, const char* op) {
  const auto type = t.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16, op, ": ",
              name, " must be float32, float64, float16 or bfloat16, got ", type);
}

// Fills the input-side view (in_strides, outer, channels, inner) from a dense tensor.
void set_input_view(MaxoutParams& p, const at::Tensor& dense, int64_t dim) {
  const bool ok = view3(dense, dim, p.outer, p.inner, p.in_strides);
  TORCH_INTERNAL_ASSERT(ok, "cifarops: maxout input view does not collapse");
  p.channels = dense.size(dim);
}

Strides3 output_strides(const at::Tensor& t, int64_t dim) {
  int64_t outer, inner;
  Strides3 s;
  const bool ok = view3(t, dim, outer, inner, s);
  TORCH_INTERNAL_ASSERT(ok, "cifarops: maxout output view does not collapse");
  return s;
}

std::vector<int64_t> with_size(at::IntArrayRef sizes, int64_t dim, int64_t size) {
  std::vector<int64_t> out(sizes.begin(), sizes.end());
  out[dim] = size;
  return out;
}

}  // namespace

MaxoutCall maxout_forward_call(const at::Tensor& x, int64_t pieces, int64_t dim, const std::string& grouping,
                               MaxoutMode mode, double temperature, const std::optional<at::Tensor>& seed,
                               const char* op) {
  check_floating(x, "x", op);
  dim = check_grouping(x, pieces, dim, grouping, op);
  TORCH_CHECK(x.size(dim) % pieces == 0, op, ": x.size(", dim, ") = ", x.size(dim),
              " channels are not divisible by pieces = ", pieces);
  if (mode != MaxoutMode::Max) {
    TORCH_CHECK(temperature > 0, op, ": temperature must be a positive number, got ", temperature);
  }
  if (mode == MaxoutMode::Sample) {
    TORCH_CHECK(seed.has_value(), op, ": seed is required");
    check_seed(*seed, x, op);
  }
  const at::MemoryFormat format = maxout_format(x, dim);
  MaxoutCall call;
  at::Tensor dense = x.contiguous(format);
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
  p.dtype = to_dtype(x.scalar_type());
  if (x.numel() == 0) return call;
  set_input_view(p, dense, dim);
  p.input = dense.data_ptr();
  p.output = call.output.data_ptr();
  p.out_strides = output_strides(call.output, dim);
  if (call.index.defined()) p.index = call.index.data_ptr<uint8_t>();
  if (mode == MaxoutMode::Sample) p.seed = seed->data_ptr<int64_t>();
  return call;
}

MaxoutCall maxout_backward_call(const at::Tensor& grad_y, const at::Tensor& index, int64_t pieces, int64_t dim,
                                const std::string& grouping) {
  constexpr const char* op = "cifarops._maxout_backward";
  check_floating(grad_y, "grad_y", op);
  dim = check_grouping(grad_y, pieces, dim, grouping, op);
  TORCH_CHECK(index.scalar_type() == at::kByte, op, ": index must be uint8, got ", index.scalar_type());
  TORCH_CHECK(index.sizes() == grad_y.sizes(), op, ": index must have grad_y's shape ", grad_y.sizes(), ", got ",
              index.sizes());
  check_same_device(index, grad_y, "index", op);
  const at::MemoryFormat format = maxout_format(index, dim);
  MaxoutCall call;
  // grad_y and index are read at the same strides: bring both to one dense layout.
  at::Tensor dense_grad = grad_y.contiguous(format), dense_index = index.contiguous(format);
  call.keep_alive = {dense_grad, dense_index};
  call.grad_input = empty_output(with_size(grad_y.sizes(), dim, grad_y.size(dim) * pieces), grad_y.options(), format);
  MaxoutParams& p = call.params;
  p.pieces = pieces;
  p.strided_grouping = grouping == "strided";
  p.dtype = to_dtype(grad_y.scalar_type());
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
                                            int64_t dim, const std::string& grouping, double temperature) {
  constexpr const char* op = "cifarops._probabilistic_maxout_expectation_backward";
  check_floating(grad_y, "grad_y", op);
  check_floating(x, "x", op);
  TORCH_CHECK(temperature > 0, op, ": temperature must be a positive number, got ", temperature);
  dim = check_grouping(x, pieces, dim, grouping, op);
  TORCH_CHECK(grad_y.sizes() == with_size(x.sizes(), dim, x.size(dim) / pieces), op,
              ": grad_y has shape ", grad_y.sizes(), ", which is not the output shape of x ", x.sizes());
  check_same_device(grad_y, x, "grad_y", op);
  const at::MemoryFormat format = maxout_format(x, dim);
  MaxoutCall call;
  at::Tensor dense_x = x.contiguous(format), dense_grad = grad_y.contiguous(format);
  call.keep_alive = {dense_x, dense_grad};
  call.grad_input = empty_output(x.sizes(), x.options(), format);
  MaxoutParams& p = call.params;
  p.pieces = pieces;
  p.strided_grouping = grouping == "strided";
  p.mode = MaxoutMode::Expectation;
  p.inverse_temperature = 1.0 / temperature;
  p.dtype = to_dtype(x.scalar_type());
  if (x.numel() == 0) return call;
  set_input_view(p, dense_x, dim);
  TORCH_INTERNAL_ASSERT(output_strides(call.grad_input, dim).inner == p.in_strides.inner);
  p.input = dense_x.data_ptr();
  p.out_strides = output_strides(dense_grad, dim);
  p.grad_output = dense_grad.data_ptr();
  p.grad_input = call.grad_input.data_ptr();
  return call;
}

}  // namespace cifarops
