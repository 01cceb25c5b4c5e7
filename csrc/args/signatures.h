// The C++ signature of every schema in csrc/ops.cpp, and a handle to call each op through the dispatcher.
// The Autograd kernels (csrc/args/<op>.cpp) call the ops below them through these, and so does the direct
// Python entry (csrc/python_module.cpp). A signature that does not match its schema fails at the first call,
// when the handle is made, never silently.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace cifarops {

using OptTensor = std::optional<at::Tensor>;
using Tensor2 = std::tuple<at::Tensor, at::Tensor>;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

using ShakeDropSig = Tensor2(const at::Tensor& h, const OptTensor& shortcut, double p_drop,
                             at::ArrayRef<double> alpha_range, at::ArrayRef<double> beta_range,
                             c10::string_view gate_level, c10::string_view level, bool training, const OptTensor& gate,
                             const OptTensor& alpha, const OptTensor& beta, const OptTensor& rng_state);
using ShakeDropBackwardSig = at::Tensor(const at::Tensor& grad_y, const at::Tensor& rng_state, double p_drop,
                                        at::ArrayRef<double> alpha_range, at::ArrayRef<double> beta_range,
                                        c10::string_view gate_level, c10::string_view level, bool training,
                                        const OptTensor& gate, const OptTensor& beta);

using StochasticDepthSig = Tensor2(const at::Tensor& h, const OptTensor& shortcut, double p, c10::string_view mode,
                                   bool scale_by_keep, bool training, const OptTensor& gate,
                                   const OptTensor& rng_state);
using StochasticDepthBackwardSig = at::Tensor(const at::Tensor& grad_y, const at::Tensor& rng_state, double p,
                                              c10::string_view mode, bool scale_by_keep, bool training,
                                              const OptTensor& gate);

using DropActivationSig = Tensor2(const at::Tensor& x, double keep, bool training, const OptTensor& mask,
                                  const OptTensor& rng_state);
using DropActivationInplaceSig = at::Tensor(at::Tensor& x, double keep, bool training, const OptTensor& mask,
                                            const OptTensor& rng_state);
using DropActivationBackwardSig = at::Tensor(const at::Tensor& grad_y, const at::Tensor& y,
                                             const at::Tensor& rng_state, double keep, bool training,
                                             const OptTensor& mask);

using ShakeShakeSig = Tensor2(const at::Tensor& h1, const at::Tensor& h2, const OptTensor& shortcut,
                              c10::string_view forward_mode, c10::string_view backward_mode, c10::string_view level,
                              bool training, const OptTensor& alpha, const OptTensor& beta,
                              const OptTensor& rng_state);
using ShakeShakeBackwardSig = Tensor2(const at::Tensor& grad_y, const at::Tensor& rng_state, const OptTensor& beta,
                                      c10::string_view backward_mode, c10::string_view level);

using MaxoutSig = Tensor2(const at::Tensor& x, int64_t pieces, int64_t dim, c10::string_view grouping);
using MaxoutBackwardSig = at::Tensor(const at::Tensor& grad_y, const at::Tensor& index, int64_t pieces, int64_t dim,
                                     c10::string_view grouping);
using ProbabilisticMaxoutSig = Tensor3(const at::Tensor& x, int64_t pieces, int64_t dim, c10::string_view grouping,
                                       double temperature, const OptTensor& rng_state);
using ExpectationSig = at::Tensor(const at::Tensor& x, int64_t pieces, int64_t dim, c10::string_view grouping,
                                  double temperature);
using ExpectationBackwardSig = at::Tensor(const at::Tensor& grad_y, const at::Tensor& x, int64_t pieces, int64_t dim,
                                          c10::string_view grouping, double temperature);

using FmpSig = Tensor3(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef output_size,
                       c10::string_view regions, const OptTensor& samples, const OptTensor& boundaries,
                       bool return_indices, c10::string_view sequence, bool per_image, const OptTensor& rng_state);
using FmpBackwardSig = at::Tensor(const at::Tensor& grad_y, const at::Tensor& index, c10::SymIntArrayRef input_size,
                                  at::IntArrayRef kernel_size, c10::string_view regions, const OptTensor& samples,
                                  const OptTensor& boundaries, c10::string_view sequence, bool per_image,
                                  const OptTensor& rng_state);
using FmpSelectSig = at::Tensor(const at::Tensor& values, const at::Tensor& index, at::IntArrayRef kernel_size,
                                c10::string_view regions, const OptTensor& samples, const OptTensor& boundaries,
                                c10::string_view sequence, bool per_image, const OptTensor& rng_state);

using StochasticPoolSig = Tensor3(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                at::IntArrayRef padding, bool ceil_mode, const OptTensor& uniforms,
                                const OptTensor& rng_state);
using StochasticPoolBackwardSig = at::Tensor(const at::Tensor& grad_y, const at::Tensor& offset,
                                             c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                                             at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode);
using StochasticPoolExpectationSig = at::Tensor(const at::Tensor& x, at::IntArrayRef kernel_size,
                                                at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode);
using StochasticPoolExpectationBackwardSig = at::Tensor(const at::Tensor& grad_y, const at::Tensor& x,
                                                        at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                        at::IntArrayRef padding, bool ceil_mode);

namespace detail {
template <typename Sig>
c10::TypedOperatorHandle<Sig> find(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}
}  // namespace detail

// op_name(): the op's handle, looked up once.
#define CIFAROPS_OP_HANDLE(fn, Sig, schema_name)                               \
  inline const c10::TypedOperatorHandle<Sig>& fn() {                           \
    static const c10::TypedOperatorHandle<Sig> handle = detail::find<Sig>(schema_name); \
    return handle;                                                             \
  }

CIFAROPS_OP_HANDLE(shake_drop_op, ShakeDropSig, "cifarops::shake_drop")
CIFAROPS_OP_HANDLE(shake_drop_backward_op, ShakeDropBackwardSig, "cifarops::_shake_drop_backward")
CIFAROPS_OP_HANDLE(stochastic_depth_op, StochasticDepthSig, "cifarops::stochastic_depth")
CIFAROPS_OP_HANDLE(stochastic_depth_backward_op, StochasticDepthBackwardSig, "cifarops::_stochastic_depth_backward")
CIFAROPS_OP_HANDLE(drop_activation_op, DropActivationSig, "cifarops::drop_activation")
CIFAROPS_OP_HANDLE(drop_activation_inplace_op, DropActivationInplaceSig, "cifarops::drop_activation_")
CIFAROPS_OP_HANDLE(drop_activation_backward_op, DropActivationBackwardSig, "cifarops::_drop_activation_backward")
CIFAROPS_OP_HANDLE(shake_shake_op, ShakeShakeSig, "cifarops::shake_shake")
CIFAROPS_OP_HANDLE(shake_shake_backward_op, ShakeShakeBackwardSig, "cifarops::_shake_shake_backward")
CIFAROPS_OP_HANDLE(maxout_op, MaxoutSig, "cifarops::maxout")
CIFAROPS_OP_HANDLE(maxout_backward_op, MaxoutBackwardSig, "cifarops::_maxout_backward")
CIFAROPS_OP_HANDLE(probabilistic_maxout_op, ProbabilisticMaxoutSig, "cifarops::probabilistic_maxout")
CIFAROPS_OP_HANDLE(expectation_op, ExpectationSig, "cifarops::probabilistic_maxout_expectation")
CIFAROPS_OP_HANDLE(expectation_backward_op, ExpectationBackwardSig,
                   "cifarops::_probabilistic_maxout_expectation_backward")
CIFAROPS_OP_HANDLE(fmp_op, FmpSig, "cifarops::fractional_max_pool2d")
CIFAROPS_OP_HANDLE(fmp_backward_op, FmpBackwardSig, "cifarops::_fractional_max_pool2d_backward")
CIFAROPS_OP_HANDLE(fmp_select_op, FmpSelectSig, "cifarops::_fractional_max_pool2d_select")

CIFAROPS_OP_HANDLE(stochastic_pool_op, StochasticPoolSig, "cifarops::stochastic_pool2d")
CIFAROPS_OP_HANDLE(stochastic_pool_backward_op, StochasticPoolBackwardSig, "cifarops::_stochastic_pool2d_backward")
CIFAROPS_OP_HANDLE(stochastic_pool_expectation_op, StochasticPoolExpectationSig,
                   "cifarops::stochastic_pool2d_expectation")
CIFAROPS_OP_HANDLE(stochastic_pool_expectation_backward_op, StochasticPoolExpectationBackwardSig,
                   "cifarops::_stochastic_pool2d_expectation_backward")

#undef CIFAROPS_OP_HANDLE

}  // namespace cifarops
