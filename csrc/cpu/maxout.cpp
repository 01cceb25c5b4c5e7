// Maxout and probabilistic maxout on the CPU: rows of the (outer, C, inner) view in parallel, the element
// math of maxout.h inside. Forward writes each output (and its byte of piece) once; backward writes each
// input gradient once.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "args/maxout.h"
#include "cifarops/maxout.h"

namespace cifarops {
namespace {

// Calls body(o, c) for every row of `channels` rows per outer index, in parallel.
template <typename Body>
void for_each_row(const MaxoutParams& p, int64_t channels, Body body) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, p.inner * p.pieces));
  at::parallel_for(0, p.outer * channels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) body(r / channels, r % channels);
  });
}

template <typename scalar_t>
void forward(const MaxoutParams& p) {
  for_each_row(p, p.groups(), [&](int64_t o, int64_t j) {
    for (int64_t i = 0; i < p.inner; ++i) maxout_forward_element<scalar_t>(p, o, j, i);
  });
}

template <typename scalar_t>
void backward(const MaxoutParams& p) {
  for_each_row(p, p.channels, [&](int64_t o, int64_t c) {
    if (p.mode == MaxoutMode::Expectation) {
      for (int64_t i = 0; i < p.inner; ++i) maxout_expectation_backward_element<scalar_t>(p, o, c, i);
    } else {
      for (int64_t i = 0; i < p.inner; ++i) maxout_backward_element<scalar_t>(p, o, c, i);
    }
  });
}

void run_forward(const MaxoutCall& call, at::ScalarType type) {
  if (call.params.output_numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "maxout_cpu", [&] { forward<scalar_t>(call.params); });
}

void run_backward(const MaxoutCall& call, at::ScalarType type) {
  if (call.params.input_numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "maxout_backward_cpu",
                                  [&] { backward<scalar_t>(call.params); });
}

std::tuple<at::Tensor, at::Tensor> maxout_cpu(const at::Tensor& x, int64_t pieces, int64_t dim,
                                              c10::string_view grouping) {
  const MaxoutCall call = maxout_forward_call(x, pieces, dim, std::string(grouping), MaxoutMode::Max, 1.0,
                                              std::nullopt, "cifarops.maxout");
  run_forward(call, x.scalar_type());
  return {call.output, call.index};
}

std::tuple<at::Tensor, at::Tensor> probabilistic_maxout_cpu(const at::Tensor& x, int64_t pieces, int64_t dim,
                                                            c10::string_view grouping, double temperature,
                                                            const at::Tensor& seed) {
  const MaxoutCall call = maxout_forward_call(x, pieces, dim, std::string(grouping), MaxoutMode::Sample, temperature,
                                              seed, "cifarops.probabilistic_maxout");
  run_forward(call, x.scalar_type());
  return {call.output, call.index};
}

at::Tensor probabilistic_maxout_expectation_cpu(const at::Tensor& x, int64_t pieces, int64_t dim,
                                                c10::string_view grouping, double temperature) {
  const MaxoutCall call = maxout_forward_call(x, pieces, dim, std::string(grouping), MaxoutMode::Expectation,
                                              temperature, std::nullopt, "cifarops.probabilistic_maxout");
  run_forward(call, x.scalar_type());
  return call.output;
}

at::Tensor maxout_backward_cpu(const at::Tensor& grad_y, const at::Tensor& index, int64_t pieces, int64_t dim,
                               c10::string_view grouping) {
  const MaxoutCall call = maxout_backward_call(grad_y, index, pieces, dim, std::string(grouping));
  run_backward(call, grad_y.scalar_type());
  return call.grad_input;
}

at::Tensor probabilistic_maxout_expectation_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                         int64_t pieces, int64_t dim, c10::string_view grouping,
                                                         double temperature) {
  const MaxoutCall call = maxout_expectation_backward_call(grad_y, x, pieces, dim, std::string(grouping), temperature);
  run_backward(call, x.scalar_type());
  return call.grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CPU, m) {
  m.impl("maxout", &maxout_cpu);
  m.impl("_maxout_backward", &maxout_backward_cpu);
  m.impl("probabilistic_maxout", &probabilistic_maxout_cpu);
  m.impl("probabilistic_maxout_expectation", &probabilistic_maxout_expectation_cpu);
  m.impl("_probabilistic_maxout_expectation_backward", &probabilistic_maxout_expectation_backward_cpu);
}

}  // namespace cifarops
