// Maxout and probabilistic maxout's shared math (SPEC.md). The input is seen as (outer, C, inner) with
// `dim` in the middle; output group j of C / k gathers k pieces:
//   contiguous grouping (pylearn2): channel j * k + piece;   strided grouping (Lua nn.Maxout): piece * (C/k) + j.
// Forward writes each output once with the winning (or drawn) piece as one byte; backward writes each input
// element once, gathering from its own output: no zero-filled buffer, no scatter, no atomics.
//
// Torch-free: included by csrc/cpu/maxout.cpp and csrc/cuda/maxout.cu.
#pragma once

#include <stdint.h>

#include "cifarops/macros.h"
#include "cifarops/philox.h"
#include "cifarops/tensor_types.h"

#if defined(__CUDACC__)
#include <math.h>
#define CIFAROPS_ISNAN(x) isnan(x)
#define CIFAROPS_EXP(x) exp(x)
#else
#include <cmath>
#define CIFAROPS_ISNAN(x) std::isnan(x)
#define CIFAROPS_EXP(x) std::exp(x)
#endif

namespace cifarops {

enum class MaxoutMode : int {
  Max = 0,          // y = max over pieces, index = first argmax (NaN wins: it propagates)
  Sample = 1,       // y = z_i with i ~ softmax(z / temperature): probabilistic maxout in training
  Expectation = 2,  // y = sum_i softmax(z / temperature)_i z_i: probabilistic maxout at test time
};

// Strides of the logical (outer, channel, inner) view, in elements.
struct Strides3 {
  int64_t outer = 0, channel = 0, inner = 0;
  CIFAROPS_INLINE int64_t at(int64_t o, int64_t c, int64_t i) const { return o * outer + c * channel + i * inner; }
};

struct MaxoutParams {
  const void* input = nullptr;   // (outer, channels, inner) with in_strides; also grad_input's strides
  void* output = nullptr;        // (outer, channels / pieces, inner) with out_strides
  uint8_t* index = nullptr;      // winning or drawn piece, out_strides (Max and Sample)
  const void* grad_output = nullptr;  // out_strides
  void* grad_input = nullptr;         // in_strides
  int64_t outer = 0, channels = 0, inner = 0, pieces = 1;
  Strides3 in_strides, out_strides;
  bool strided_grouping = false;
  MaxoutMode mode = MaxoutMode::Max;
  double inverse_temperature = 1.0;  // lambda of arXiv 1312.6116, used in the compute type
  int64_t group_count = 0;           // channels / pieces, computed once on the host (no division per element)

  CIFAROPS_INLINE int64_t groups() const { return group_count; }
  CIFAROPS_INLINE int64_t output_numel() const { return outer * groups() * inner; }
  CIFAROPS_INLINE int64_t input_numel() const { return outer * channels * inner; }
  // Channel of `piece` in group `j`, and back (group_of / piece_of divide: once per row or plane, not per
  // element in a hot loop).
  CIFAROPS_INLINE int64_t channel_of(int64_t j, int64_t piece) const {
    return strided_grouping ? piece * groups() + j : j * pieces + piece;
  }
  CIFAROPS_INLINE int64_t group_of(int64_t c) const { return strided_grouping ? c % groups() : c / pieces; }
  CIFAROPS_INLINE int64_t piece_of(int64_t c) const { return strided_grouping ? c / groups() : c % pieces; }
};

// The Philox counter of output (o, j, i)'s draw: its logical index in (outer, groups, inner) order, stream 0.
CIFAROPS_INLINE int64_t maxout_draw_index(const MaxoutParams& p, int64_t o, int64_t j, int64_t i) {
  return (o * p.groups() + j) * p.inner + i;
}

// Output element (o, j, i): writes the value and, for Max and Sample, the piece. u: the element's uniform
// philox_uniform(state, maxout_draw_index(p, o, j, i), 0) for Sample (the caller draws it, four at a time
// with philox_quad where its loop walks consecutive indices), ignored otherwise.
template <typename scalar_t>
CIFAROPS_INLINE void maxout_forward_element(const MaxoutParams& p, int64_t o, int64_t j, int64_t i, float u) {
  using acc_t = typename OpMath<scalar_t>::type;
  const scalar_t* x = static_cast<const scalar_t*>(p.input);
  const auto piece_value = [&](int64_t piece) {
    return to_acc<acc_t>(x[p.in_strides.at(o, p.channel_of(j, piece), i)]);
  };
  // First maximum, NaN included: the first NaN wins and propagates.
  acc_t best = piece_value(0);
  int64_t arg = 0;
  for (int64_t piece = 1; piece < p.pieces && !CIFAROPS_ISNAN(best); ++piece) {
    const acc_t v = piece_value(piece);
    if (v > best || CIFAROPS_ISNAN(v)) {
      best = v;
      arg = piece;
    }
  }
  acc_t y = best;
  if (p.mode != MaxoutMode::Max && !CIFAROPS_ISNAN(best)) {
    // softmax(lambda z) with the maximum subtracted: weights in (0, 1], the winner's exactly 1. The draw
    // gives a piece equal to the maximum weight 1 explicitly: for a +inf maximum, exp(inf - inf) is NaN, and
    // the limit of the softmax draws the +inf piece (the expectation keeps PyTorch's softmax: NaN).
    const acc_t lambda = static_cast<acc_t>(p.inverse_temperature);
    const bool draw = p.mode == MaxoutMode::Sample;
    const auto weight = [&](acc_t v) { return draw && v == best ? acc_t(1) : CIFAROPS_EXP(lambda * (v - best)); };
    acc_t total = 0, weighted = 0;
    for (int64_t piece = 0; piece < p.pieces; ++piece) {
      const acc_t v = piece_value(piece);
      const acc_t w = weight(v);
      total += w;
      weighted += w * v;
    }
    if (p.mode == MaxoutMode::Expectation) {
      y = weighted / total;
    } else {
      // Inverse CDF of the categorical distribution with one Philox uniform per output element.
      const acc_t target = static_cast<acc_t>(u) * total;
      acc_t cumulative = 0;
      arg = p.pieces - 1;
      for (int64_t piece = 0; piece < p.pieces; ++piece) {
        cumulative += weight(piece_value(piece));
        if (target < cumulative) {
          arg = piece;
          break;
        }
      }
      y = piece_value(arg);
    }
  }
  const int64_t out = p.out_strides.at(o, j, i);
  static_cast<scalar_t*>(p.output)[out] = from_acc<scalar_t>(y);
  if (p.mode != MaxoutMode::Expectation) p.index[out] = static_cast<uint8_t>(arg);
}

// grad_input (o, c, i) for Max and Sample: the output's gradient if this piece was chosen, else 0. j and
// piece: group_of(c) and piece_of(c), computed by the caller.
template <typename scalar_t>
CIFAROPS_INLINE void maxout_backward_element(const MaxoutParams& p, int64_t o, int64_t c, int64_t i, int64_t j,
                                             int64_t piece) {
  const int64_t out = p.out_strides.at(o, j, i);
  const bool chosen = p.index[out] == piece;
  static_cast<scalar_t*>(p.grad_input)[p.in_strides.at(o, c, i)] =
      chosen ? static_cast<const scalar_t*>(p.grad_output)[out] : from_acc<scalar_t>(0.0f);
}

// grad_input (o, c, i) for Expectation: dy * p_c * (1 + lambda * (z_c - y)), the softmax-weighted gradient
// including the softmax's own derivative (y = sum_i p_i z_i, dp_i/dz_c = lambda p_i (delta_ic - p_c)).
// j: group_of(c), computed by the caller.
template <typename scalar_t>
CIFAROPS_INLINE void maxout_expectation_backward_element(const MaxoutParams& p, int64_t o, int64_t c, int64_t i,
                                                         int64_t j) {
  using acc_t = typename OpMath<scalar_t>::type;
  const scalar_t* x = static_cast<const scalar_t*>(p.input);
  const acc_t lambda = static_cast<acc_t>(p.inverse_temperature);
  acc_t best = to_acc<acc_t>(x[p.in_strides.at(o, p.channel_of(j, 0), i)]);
  for (int64_t piece = 1; piece < p.pieces; ++piece) {
    const acc_t v = to_acc<acc_t>(x[p.in_strides.at(o, p.channel_of(j, piece), i)]);
    best = v > best || CIFAROPS_ISNAN(v) ? v : best;
  }
  acc_t total = 0, weighted = 0;
  for (int64_t piece = 0; piece < p.pieces; ++piece) {
    const acc_t v = to_acc<acc_t>(x[p.in_strides.at(o, p.channel_of(j, piece), i)]);
    const acc_t w = CIFAROPS_EXP(lambda * (v - best));
    total += w;
    weighted += w * v;
  }
  const acc_t z = to_acc<acc_t>(x[p.in_strides.at(o, c, i)]);
  const acc_t y = weighted / total;
  const acc_t prob = CIFAROPS_EXP(lambda * (z - best)) / total;
  const acc_t dy = to_acc<acc_t>(static_cast<const scalar_t*>(p.grad_output)[p.out_strides.at(o, j, i)]);
  static_cast<scalar_t*>(p.grad_input)[p.in_strides.at(o, c, i)] =
      from_acc<scalar_t>(dy * prob * (acc_t(1) + lambda * (z - y)));
}

}  // namespace cifarops
