// Maxout and probabilistic maxout on the CPU: rows of the (outer, C, inner) view in parallel, the element
// math of maxout.h inside. Forward writes each output (and its byte of piece) once; backward writes each
// input gradient once.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <type_traits>

#include "args/maxout.h"
#include "args/rng.h"
#include "cifarops/maxout.h"

namespace cifarops {
namespace {

// Calls body(o, c) for every row of `channels` rows per outer index, in parallel.
template <typename Body>
void for_each_row(const MaxoutParams& p, int64_t channels, Body body) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, p.inner * p.pieces));
  at::parallel_for(0, p.outer * channels, grain, [&](int64_t begin, int64_t end) {
    int64_t o = begin / channels, c = begin % channels;  // one division per chunk, then counters
    for (int64_t r = begin; r < end; ++r) {
      body(o, c);
      if (++c == channels) c = 0, ++o;
    }
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
    int64_t o = begin / p.inner, i = begin % p.inner;  // one division per chunk, then counters
    for (int64_t r = begin; r < end; ++r) {
      body(o, i);
      if (++i == p.inner) i = 0, ++o;
    }
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

// The generic path (any strides; every Sample and Expectation forward): row by row, each output once. The
// draw of output (o, j, i) is u(maxout_draw_index), consecutive along a row: one philox_quad per four.
template <typename scalar_t>
void forward(const MaxoutParams& p, PhiloxState rng) {
  if (p.mode == MaxoutMode::Max && unit_inner(p)) return max_rows<scalar_t>(p);
  if (p.mode == MaxoutMode::Max && unit_channels(p)) return max_channel_rows<scalar_t>(p);
  const bool draws = p.mode == MaxoutMode::Sample;
  for_each_row(p, p.groups(), [&](int64_t o, int64_t j) {
    const uint64_t base = static_cast<uint64_t>(maxout_draw_index(p, o, j, 0));
    Philox4 words{};
    for (int64_t i = 0; i < p.inner; ++i) {
      float u = 0.0f;
      if (draws) {
        const uint64_t logical = base + static_cast<uint64_t>(i);
        if (i == 0 || (logical & 3) == 0) words = philox_quad(rng, logical >> 2, 0);
        u = philox_bits_to_uniform(philox_word(words, logical & 3));
      }
      maxout_forward_element<scalar_t>(p, o, j, i, u);
    }
  });
}

template <typename scalar_t>
void backward(const MaxoutParams& p) {
  if (p.mode != MaxoutMode::Expectation && unit_inner(p)) return chosen_backward_rows<scalar_t>(p);
  if (p.mode != MaxoutMode::Expectation && unit_channels(p)) return chosen_backward_channel_rows<scalar_t>(p);
  for_each_row(p, p.channels, [&](int64_t o, int64_t c) {
    const int64_t j = p.group_of(c), piece = p.piece_of(c);  // once per row
    if (p.mode == MaxoutMode::Expectation) {
      for (int64_t i = 0; i < p.inner; ++i) maxout_expectation_backward_element<scalar_t>(p, o, c, i, j);
    } else {
      for (int64_t i = 0; i < p.inner; ++i) maxout_backward_element<scalar_t>(p, o, c, i, j, piece);
    }
  });
}

void run_forward(const MaxoutCall& call, at::ScalarType type, PhiloxState rng = {}) {
  if (call.params.output_numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "maxout_cpu",
                                  [&] { forward<scalar_t>(call.params, rng); });
}

void run_backward(const MaxoutCall& call, at::ScalarType type) {
  if (call.params.input_numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "maxout_backward_cpu",
                                  [&] { backward<scalar_t>(call.params); });
}

std::tuple<at::Tensor, at::Tensor> maxout_cpu(const at::Tensor& x, int64_t pieces, int64_t dim,
                                              c10::string_view grouping) {
  const MaxoutCall call =
      maxout_forward_call(x, pieces, dim, grouping, MaxoutMode::Max, 1.0, std::nullopt, "cifarops.maxout");
  run_forward(call, x.scalar_type());
  return {call.output, call.index};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> probabilistic_maxout_cpu(const at::Tensor& x, int64_t pieces,
                                                                        int64_t dim, c10::string_view grouping,
                                                                        double temperature,
                                                                        const std::optional<at::Tensor>& rng_state) {
  // Every check first: a call that fails them draws nothing.
  const MaxoutCall call = maxout_forward_call(x, pieces, dim, grouping, MaxoutMode::Sample, temperature, rng_state,
                                              "cifarops.probabilistic_maxout");
  const PhiloxState rng = cpu_state(rng_state, true);
  run_forward(call, x.scalar_type(), rng);
  return {call.output, call.index, cpu_state_tensor(x, rng)};
}

at::Tensor probabilistic_maxout_expectation_cpu(const at::Tensor& x, int64_t pieces, int64_t dim,
                                                c10::string_view grouping, double temperature) {
  const MaxoutCall call = maxout_forward_call(x, pieces, dim, grouping, MaxoutMode::Expectation, temperature,
                                              std::nullopt, "cifarops.probabilistic_maxout");
  run_forward(call, x.scalar_type());
  return call.output;
}

at::Tensor maxout_backward_cpu(const at::Tensor& grad_y, const at::Tensor& index, int64_t pieces, int64_t dim,
                               c10::string_view grouping) {
  const MaxoutCall call = maxout_backward_call(grad_y, index, pieces, dim, grouping);
  run_backward(call, grad_y.scalar_type());
  return call.grad_input;
}

at::Tensor probabilistic_maxout_expectation_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                         int64_t pieces, int64_t dim, c10::string_view grouping,
                                                         double temperature) {
  const MaxoutCall call = maxout_expectation_backward_call(grad_y, x, pieces, dim, grouping, temperature);
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
