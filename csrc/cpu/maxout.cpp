// Maxout and probabilistic maxout on the CPU: rows of the (outer, C, inner) view in parallel, the element
// math of maxout.h inside. Forward writes each output (and its byte of piece) once; backward writes each
// input gradient once.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <type_traits>

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

// Rows along a unit-stride inner dim (NCHW with dim = 1, and any dim of a contiguous tensor but the last).
bool unit_inner(const MaxoutParams& p) { return p.inner > 1 && p.in_strides.inner == 1 && p.out_strides.inner == 1; }

// One piece folded into a row's running maximum (in y, exact: a maximum is one of the inputs) and running
// piece. Bitwise & and | rather than && and ||: without branches the compiler vectorises the loop.
template <typename scalar_t>
void fold_piece(const scalar_t* CIFAROPS_RESTRICT z, scalar_t* CIFAROPS_RESTRICT y, uint8_t* CIFAROPS_RESTRICT index,
                int64_t n, uint8_t piece) {
  using acc_t = typename OpMath<scalar_t>::type;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t best = static_cast<acc_t>(y[i]), v = static_cast<acc_t>(z[i]);
    const bool take = (best == best) & ((v > best) | (v != v));  // first maximum; NaN wins and stays
    y[i] = take ? z[i] : y[i];
    index[i] = take ? piece : index[i];
  }
}

// The unsigned integer with a value's bits.
template <typename scalar_t>
using Bits = std::conditional_t<sizeof(scalar_t) == 2, uint16_t, std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>>;

// dx = index == piece ? dy : +0, as a bit mask over the values' bits: exact for every value (NaN and inf
// included), and without a branch, so the compiler vectorises it (a ?: select of floats here it does not).
template <typename scalar_t>
void select_row(const scalar_t* CIFAROPS_RESTRICT dy, const uint8_t* CIFAROPS_RESTRICT index,
                scalar_t* CIFAROPS_RESTRICT dx, int64_t n, uint8_t piece) {
  using bits_t = Bits<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    const bits_t mask = static_cast<bits_t>(0) - static_cast<bits_t>(index[i] == piece);
    bits_t value;
    std::memcpy(&value, dy + i, sizeof(value));
    value &= mask;
    std::memcpy(dx + i, &value, sizeof(value));
  }
}

// Groups of k adjacent pieces (contiguous grouping along unit-stride channels), folded piece by piece like
// the rows above, at stride k. A compile-time k (2, 3, 4) lets the compiler vectorise the strided loads;
// nesting the piece loop inside the group loop instead leaves a branch per piece that random data mispredicts.
template <typename scalar_t, int kPieces>
void max_adjacent_fixed(const scalar_t* CIFAROPS_RESTRICT x, scalar_t* CIFAROPS_RESTRICT y,
                        uint8_t* CIFAROPS_RESTRICT index, int64_t groups, int64_t pieces) {
  using acc_t = typename OpMath<scalar_t>::type;
  const int64_t k = kPieces > 0 ? kPieces : pieces;
  for (int64_t j = 0; j < groups; ++j) {
    y[j] = x[j * k];
    index[j] = 0;
  }
  for (int64_t piece = 1; piece < k; ++piece) {
    for (int64_t j = 0; j < groups; ++j) {
      const acc_t best = static_cast<acc_t>(y[j]), v = static_cast<acc_t>(x[j * k + piece]);
      const bool take = (best == best) & ((v > best) | (v != v));  // first maximum; NaN wins and stays
      y[j] = take ? x[j * k + piece] : y[j];
      index[j] = take ? static_cast<uint8_t>(piece) : index[j];
    }
  }
}

template <typename scalar_t>
void max_adjacent(const scalar_t* x, scalar_t* y, uint8_t* index, int64_t groups, int64_t pieces) {
  switch (pieces) {
    case 2: return max_adjacent_fixed<scalar_t, 2>(x, y, index, groups, pieces);
    case 3: return max_adjacent_fixed<scalar_t, 3>(x, y, index, groups, pieces);
    case 4: return max_adjacent_fixed<scalar_t, 4>(x, y, index, groups, pieces);
    default: return max_adjacent_fixed<scalar_t, 0>(x, y, index, groups, pieces);
  }
}

// dx[j k + piece] = piece == index[j] ? dy[j] : +0, with the same bit mask as select_row; group by group,
// so the stores are sequential.
template <typename scalar_t, int kPieces>
void select_adjacent_fixed(const scalar_t* CIFAROPS_RESTRICT dy, const uint8_t* CIFAROPS_RESTRICT index,
                           scalar_t* CIFAROPS_RESTRICT dx, int64_t groups, int64_t pieces) {
  using bits_t = Bits<scalar_t>;
  const int64_t k = kPieces > 0 ? kPieces : pieces;
  for (int64_t j = 0; j < groups; ++j) {
    bits_t value;
    std::memcpy(&value, dy + j, sizeof(value));
    for (int64_t piece = 0; piece < k; ++piece) {
      const bits_t masked = value & (static_cast<bits_t>(0) - static_cast<bits_t>(index[j] == piece));
      std::memcpy(dx + j * k + piece, &masked, sizeof(masked));
    }
  }
}

template <typename scalar_t>
void select_adjacent(const scalar_t* dy, const uint8_t* index, scalar_t* dx, int64_t groups, int64_t pieces) {
  switch (pieces) {
    case 2: return select_adjacent_fixed<scalar_t, 2>(dy, index, dx, groups, pieces);
    case 3: return select_adjacent_fixed<scalar_t, 3>(dy, index, dx, groups, pieces);
    case 4: return select_adjacent_fixed<scalar_t, 4>(dy, index, dx, groups, pieces);
    default: return select_adjacent_fixed<scalar_t, 0>(dy, index, dx, groups, pieces);
  }
}

// Max mode along unit-stride rows, piece by piece over the whole row; the row stays in cache across the
// k passes.
template <typename scalar_t>
void max_rows(const MaxoutParams& p) {
  const scalar_t* x = static_cast<const scalar_t*>(p.input);
  for_each_row(p, p.groups(), [&](int64_t o, int64_t j) {
    scalar_t* y = static_cast<scalar_t*>(p.output) + p.out_strides.at(o, j, 0);
    uint8_t* index = p.index + p.out_strides.at(o, j, 0);
    std::memcpy(y, x + p.in_strides.at(o, p.channel_of(j, 0), 0), p.inner * sizeof(scalar_t));
    std::memset(index, 0, p.inner);
    for (int64_t piece = 1; piece < p.pieces; ++piece) {
      fold_piece(x + p.in_strides.at(o, p.channel_of(j, piece), 0), y, index, p.inner, static_cast<uint8_t>(piece));
    }
  });
}

// Backward from the chosen pieces along unit-stride rows: each input row is its group's gradient row where
// the piece matches, else 0.
template <typename scalar_t>
void chosen_backward_rows(const MaxoutParams& p) {
  for_each_row(p, p.channels, [&](int64_t o, int64_t c) {
    const int64_t out = p.out_strides.at(o, p.group_of(c), 0);
    select_row(static_cast<const scalar_t*>(p.grad_output) + out, p.index + out,
               static_cast<scalar_t*>(p.grad_input) + p.in_strides.at(o, c, 0), p.inner,
               static_cast<uint8_t>(p.piece_of(c)));
  });
}

// Channels at unit stride (channels_last with dim = 1, or dim = -1 of a contiguous tensor, e.g. a fully
// connected layer): one row of C per (o, i). With strided grouping each piece is a contiguous run of C/k.
bool unit_channels(const MaxoutParams& p) { return p.in_strides.channel == 1 && p.out_strides.channel == 1; }

// Calls body(o, i) for every (outer, inner) pair, in parallel.
template <typename Body>
void for_each_channel_row(const MaxoutParams& p, Body body) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, p.channels));
  at::parallel_for(0, p.outer * p.inner, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) body(r / p.inner, r % p.inner);
  });
}

template <typename scalar_t>
void max_channel_rows(const MaxoutParams& p) {
  const int64_t groups = p.groups();
  for_each_channel_row(p, [&](int64_t o, int64_t i) {
    const scalar_t* x = static_cast<const scalar_t*>(p.input) + p.in_strides.at(o, 0, i);
    scalar_t* y = static_cast<scalar_t*>(p.output) + p.out_strides.at(o, 0, i);
    uint8_t* index = p.index + p.out_strides.at(o, 0, i);
    if (p.strided_grouping) {
      std::memcpy(y, x, groups * sizeof(scalar_t));
      std::memset(index, 0, groups);
      for (int64_t piece = 1; piece < p.pieces; ++piece) {
        fold_piece(x + piece * groups, y, index, groups, static_cast<uint8_t>(piece));
      }
      return;
    }
    max_adjacent(x, y, index, groups, p.pieces);  // contiguous grouping: a group's k pieces are adjacent
  });
}

template <typename scalar_t>
void chosen_backward_channel_rows(const MaxoutParams& p) {
  const int64_t groups = p.groups();
  for_each_channel_row(p, [&](int64_t o, int64_t i) {
    const scalar_t* dy = static_cast<const scalar_t*>(p.grad_output) + p.out_strides.at(o, 0, i);
    const uint8_t* index = p.index + p.out_strides.at(o, 0, i);
    scalar_t* dx = static_cast<scalar_t*>(p.grad_input) + p.in_strides.at(o, 0, i);
    if (p.strided_grouping) {
      for (int64_t piece = 0; piece < p.pieces; ++piece) {
        select_row(dy, index, dx + piece * groups, groups, static_cast<uint8_t>(piece));
      }
      return;
    }
    select_adjacent(dy, index, dx, groups, p.pieces);
  });
}

template <typename scalar_t>
void forward(const MaxoutParams& p) {
  if (p.mode == MaxoutMode::Max && unit_inner(p)) return max_rows<scalar_t>(p);
  if (p.mode == MaxoutMode::Max && unit_channels(p)) return max_channel_rows<scalar_t>(p);
  for_each_row(p, p.groups(), [&](int64_t o, int64_t j) {
    for (int64_t i = 0; i < p.inner; ++i) maxout_forward_element<scalar_t>(p, o, j, i);
  });
}

template <typename scalar_t>
void backward(const MaxoutParams& p) {
  if (p.mode != MaxoutMode::Expectation && unit_inner(p)) return chosen_backward_rows<scalar_t>(p);
  if (p.mode != MaxoutMode::Expectation && unit_channels(p)) return chosen_backward_channel_rows<scalar_t>(p);
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
