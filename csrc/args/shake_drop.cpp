#include "args/shake_drop.h"

#include "args/common.h"

namespace cifarops {
namespace {

// A coefficient tensor (alpha or beta) is (N, C), possibly an expanded view, or h's full shape; None means
// Philox noise, for which `seed` and a two-value `range` must be given.
void check_coefficient(const at::Tensor& h, const std::optional<at::Tensor>& coef, const char* name,
                       const std::optional<at::Tensor>& seed, at::ArrayRef<double> range, const char* range_name) {
  TORCH_CHECK(range.size() == 2, "cifarops.shake_drop: ", range_name, " must have two values, got ", range.size());
  if (!coef.has_value()) {
    TORCH_CHECK(seed.has_value(), "cifarops.shake_drop: ", name, " is None, so seed is required for Philox noise");
    check_seed(*seed, h, "cifarops.shake_drop");
    return;
  }
  check_same_device(*coef, h, name, "cifarops.shake_drop");
  check_opmath_dtype(*coef, h, name, "cifarops.shake_drop");
  const bool per_channel = coef->dim() == 2 && coef->size(0) == h.size(0) && coef->size(1) == h.size(1);
  TORCH_CHECK(per_channel || coef->sizes() == h.sizes(), "cifarops.shake_drop: ", name, " must have shape (N, C) = (",
              h.size(0), ", ", h.size(1), ") or h's shape ", h.sizes(), ", got ", coef->sizes());
}

// Fills gate and coefficient fields of `p`; `coef` is alpha (forward) or beta (backward).
void set_noise(ShakeDropCall& call, const at::Tensor& h, at::MemoryFormat format, const at::Tensor& gate,
               const std::optional<at::Tensor>& coef, const std::optional<at::Tensor>& seed,
               at::ArrayRef<double> range, uint32_t stream) {
  ShakeDropParams& p = call.params;
  p.gate = gate.data_ptr();
  p.gate_stride = gate.stride(0);
  p.stream = stream;
  if (!coef.has_value()) {
    p.coef_source = CoefSource::Philox;
    p.seed = seed->data_ptr<int64_t>();
    p.lo = static_cast<float>(range[0]);
    p.hi = static_cast<float>(range[1]);
  } else if (coef->dim() == 2) {  // (N, C); for a 2-D h that is also h's own shape
    p.coef_source = CoefSource::PerChannel;
    p.coef = coef->data_ptr();
    p.coef_stride_n = coef->stride(0);
    p.coef_stride_c = coef->stride(1);
  } else {
    at::Tensor dense = coef->contiguous(format);
    call.keep_alive.push_back(dense);
    p.coef_source = CoefSource::PerElement;
    p.coef = dense.data_ptr();
  }
}

void check_gate(const at::Tensor& gate, const at::Tensor& h) {
  check_same_device(gate, h, "gate", "cifarops.shake_drop");
  check_opmath_dtype(gate, h, "gate", "cifarops.shake_drop");
  TORCH_CHECK(gate.dim() == 1 && gate.size(0) == h.size(0), "cifarops.shake_drop: gate must have shape (N,) = (",
              h.size(0), ",), possibly expanded, got ", gate.sizes());
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
  p.shortcut_channels = 0;
  p.channels_last = format == at::MemoryFormat::ChannelsLast;
  p.dtype = to_dtype(h.scalar_type());
  return call;
}

}  // namespace

ShakeDropCall shake_drop_forward_call(const at::Tensor& h, const std::optional<at::Tensor>& shortcut,
                                      const at::Tensor& gate, const std::optional<at::Tensor>& alpha,
                                      const std::optional<at::Tensor>& beta,
                                      const std::optional<at::Tensor>& seed, at::ArrayRef<double> alpha_range,
                                      at::ArrayRef<double> beta_range) {
  check_nc_input(h, "h", "cifarops.shake_drop");
  if (shortcut.has_value()) {
    const at::Tensor& x = *shortcut;
    check_same_device(x, h, "shortcut", "cifarops.shake_drop");
    TORCH_CHECK(x.scalar_type() == h.scalar_type(), "cifarops.shake_drop: shortcut must have h's dtype ",
                h.scalar_type(), ", got ", x.scalar_type());
    bool same_other_dims = x.dim() == h.dim() && x.size(0) == h.size(0);
    for (int64_t d = 2; same_other_dims && d < h.dim(); ++d) same_other_dims = x.size(d) == h.size(d);
    TORCH_CHECK(same_other_dims, "cifarops.shake_drop: shortcut must match h in batch and spatial sizes, got ",
                x.sizes(), " for h ", h.sizes());
    TORCH_CHECK(x.size(1) <= h.size(1), "cifarops.shake_drop: shortcut has ", x.size(1),
                " channels, more than h's ", h.size(1));
  }
  check_gate(gate, h);
  check_coefficient(h, alpha, "alpha", seed, alpha_range, "alpha_range");
  check_coefficient(h, beta, "beta", seed, beta_range, "beta_range");

  const at::MemoryFormat format = dense_format(h);
  ShakeDropCall call = start_call(h, format);
  if (shortcut.has_value()) {
    at::Tensor dense = shortcut->contiguous(format);
    call.keep_alive.push_back(dense);
    call.params.shortcut = dense.data_ptr();
    call.params.shortcut_channels = dense.size(1);
  }
  set_noise(call, h, format, gate, alpha, seed, alpha_range, /*stream=*/0);
  return call;
}

ShakeDropCall shake_drop_backward_call(const at::Tensor& grad_y, const at::Tensor& gate,
                                       const std::optional<at::Tensor>& beta,
                                       const std::optional<at::Tensor>& seed, at::ArrayRef<double> beta_range) {
  check_nc_input(grad_y, "grad_y", "cifarops._shake_drop_backward");
  check_gate(gate, grad_y);
  check_coefficient(grad_y, beta, "beta", seed, beta_range, "beta_range");
  const at::MemoryFormat format = dense_format(grad_y);
  ShakeDropCall call = start_call(grad_y, format);
  set_noise(call, grad_y, format, gate, beta, seed, beta_range, /*stream=*/1);
  return call;
}

}  // namespace cifarops
