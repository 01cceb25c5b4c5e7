#include "args/shake_shake.h"

#include "args/common.h"

namespace cifarops {
namespace {

constexpr const char* kOp = "cifarops.shake_shake";

void check_like(const at::Tensor& t, const at::Tensor& h1, const char* name) {
  check_same_device(t, h1, name, kOp);
  TORCH_CHECK(t.scalar_type() == h1.scalar_type(), kOp, ": ", name, " must have h1's dtype ", h1.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == h1.sizes(), kOp, ": ", name, " must have h1's shape ", h1.sizes(), ", got ", t.sizes());
}

// One coefficient per sample: (N,), possibly an expanded view of one value.
void check_coefficient(const at::Tensor& coef, const at::Tensor& input, const char* name) {
  check_same_device(coef, input, name, kOp);
  check_opmath_dtype(coef, input, name, kOp);
  TORCH_CHECK(coef.dim() == 1 && coef.size(0) == input.size(0), kOp, ": ", name, " must have shape (N,) = (",
              input.size(0), ",), possibly expanded, got ", coef.sizes());
}

// Fills the fields shared by both directions; `a` is h1 (forward) or grad_y (backward).
ShakeShakeCall start_call(const at::Tensor& a, at::MemoryFormat format, const at::Tensor& coef) {
  ShakeShakeCall call;
  at::Tensor dense = a.contiguous(format);
  call.keep_alive.push_back(dense);
  call.out0 = empty_output_like(dense, format);
  ShakeShakeParams& p = call.params;
  p.a = dense.data_ptr();
  p.out0 = call.out0.data_ptr();
  p.coef = coef.data_ptr();
  p.coef_stride = coef.stride(0);
  p.batch = a.size(0);
  p.sample_size = a.size(0) == 0 ? 0 : a.numel() / a.size(0);
  p.dtype = to_dtype(a.scalar_type());
  return call;
}

const void* dense_pointer(ShakeShakeCall& call, const at::Tensor& t, at::MemoryFormat format) {
  at::Tensor dense = t.contiguous(format);
  call.keep_alive.push_back(dense);
  return dense.data_ptr();
}

}  // namespace

ShakeShakeCall shake_shake_forward_call(const at::Tensor& h1, const at::Tensor& h2,
                                        const std::optional<at::Tensor>& shortcut, const at::Tensor& alpha,
                                        const at::Tensor& beta) {
  check_nc_input(h1, "h1", kOp);
  check_like(h2, h1, "h2");
  if (shortcut.has_value()) check_like(*shortcut, h1, "shortcut");
  check_coefficient(alpha, h1, "alpha");
  check_coefficient(beta, h1, "beta");
  const at::MemoryFormat format = dense_format(h1);
  ShakeShakeCall call = start_call(h1, format, alpha);
  call.params.b = dense_pointer(call, h2, format);
  if (shortcut.has_value()) call.params.c = dense_pointer(call, *shortcut, format);
  return call;
}

ShakeShakeCall shake_shake_backward_call(const at::Tensor& grad_y, const at::Tensor& beta) {
  check_nc_input(grad_y, "grad_y", "cifarops._shake_shake_backward");
  check_coefficient(beta, grad_y, "beta");
  const at::MemoryFormat format = dense_format(grad_y);
  ShakeShakeCall call = start_call(grad_y, format, beta);
  call.out1 = empty_output_like(call.keep_alive.front(), format);
  call.params.out1 = call.out1.data_ptr();
  return call;
}

}  // namespace cifarops
