// Shake-Shake on the CPU: one pass over memory each way, parallel over chunks with at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "args/rng.h"
#include "args/shake_shake.h"
#include "cifarops/shake_shake.h"

namespace cifarops {
namespace {

// Calls body(begin, end, coef) for each piece of [begin, end) that lies within one sample, so the inner
// loops see a constant coefficient and vectorise. The coefficient is drawn (or read) once per piece.
template <typename acc_t, typename Body>
void for_each_sample_piece(const ShakeShakeParams& p, PhiloxState s, Body body) {
  at::parallel_for(0, p.numel(), 32768, [&](int64_t begin, int64_t end) {
    while (begin < end) {
      const int64_t n = begin / p.sample_size;
      const int64_t piece_end = std::min(end, (n + 1) * p.sample_size);
      body(begin, piece_end, p.coef.value<acc_t>(s, n));
      begin = piece_end;
    }
  });
}

template <typename scalar_t>
void forward_kernel(const ShakeShakeParams& p, PhiloxState s) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* CIFAROPS_RESTRICT h1 = static_cast<const scalar_t*>(p.a);
  const auto* CIFAROPS_RESTRICT h2 = static_cast<const scalar_t*>(p.b);
  const auto* CIFAROPS_RESTRICT x = static_cast<const scalar_t*>(p.c);
  auto* CIFAROPS_RESTRICT y = static_cast<scalar_t*>(p.out0);
  for_each_sample_piece<acc_t>(p, s, [&](int64_t begin, int64_t end, acc_t alpha) {
    if (x != nullptr) {
      for (int64_t m = begin; m < end; ++m) {
        y[m] = static_cast<scalar_t>(shake_shake_mix(alpha, static_cast<acc_t>(h1[m]), static_cast<acc_t>(h2[m])) +
                                     static_cast<acc_t>(x[m]));
      }
    } else {
      for (int64_t m = begin; m < end; ++m) {
        y[m] = static_cast<scalar_t>(shake_shake_mix(alpha, static_cast<acc_t>(h1[m]), static_cast<acc_t>(h2[m])));
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const ShakeShakeParams& p, PhiloxState s) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* CIFAROPS_RESTRICT g = static_cast<const scalar_t*>(p.a);
  auto* CIFAROPS_RESTRICT g1 = static_cast<scalar_t*>(p.out0);
  auto* CIFAROPS_RESTRICT g2 = static_cast<scalar_t*>(p.out1);
  for_each_sample_piece<acc_t>(p, s, [&](int64_t begin, int64_t end, acc_t beta) {
    for (int64_t m = begin; m < end; ++m) {
      const acc_t v = static_cast<acc_t>(g[m]);
      g1[m] = static_cast<scalar_t>(beta * v);
      g2[m] = static_cast<scalar_t>((acc_t(1) - beta) * v);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> shake_shake_cpu(const at::Tensor& h1, const at::Tensor& h2,
                                                   const std::optional<at::Tensor>& shortcut,
                                                   c10::string_view forward_mode, c10::string_view backward_mode,
                                                   c10::string_view level, bool training,
                                                   const std::optional<at::Tensor>& alpha,
                                                   const std::optional<at::Tensor>& beta,
                                                   const std::optional<at::Tensor>& rng_state) {
  const ShakeShakeCall call =
      shake_shake_forward_call(h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, rng_state);
  // Everything is checked: only now is the generator touched (one random64() when the call draws).
  const PhiloxState s = call.draws ? cpu_state(rng_state, true) : PhiloxState{};
  int64_t* state = call.state.data_ptr<int64_t>();
  state[0] = static_cast<int64_t>(s.seed);
  state[1] = static_cast<int64_t>(s.offset);
  if (call.params.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h1.scalar_type(), "shake_shake_cpu",
                                    [&] { forward_kernel<scalar_t>(call.params, s); });
  }
  return {call.out0, call.state};
}

std::tuple<at::Tensor, at::Tensor> shake_shake_backward_cpu(const at::Tensor& grad_y, const at::Tensor& rng_state,
                                                            const std::optional<at::Tensor>& beta,
                                                            c10::string_view backward_mode, c10::string_view level) {
  const ShakeShakeCall call = shake_shake_backward_call(grad_y, rng_state, beta, backward_mode, level);
  const PhiloxState s = call.draws ? cpu_state(rng_state, true) : PhiloxState{};
  if (call.params.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_y.scalar_type(), "shake_shake_backward_cpu",
                                    [&] { backward_kernel<scalar_t>(call.params, s); });
  }
  return {call.out0, call.out1};
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CPU, m) {
  m.impl("shake_shake", &shake_shake_cpu);
  m.impl("_shake_shake_backward", &shake_shake_backward_cpu);
}

}  // namespace cifarops
