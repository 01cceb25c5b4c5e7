// Maxout and probabilistic maxout's shared math (SPEC.md). The input is seen as (outer, C, inner) with
// `dim` in the middle; output group j of C / k gathers k pieces:
//   contiguous grouping (pylearn2): channel j * k + piece;   strided grouping (Lua nn.Maxout): piece * (C/k) + j.
// Forward writes each output once with the winning (or drawn) piece as one byte; backward writes each input
// element once, gathering from its own output: no zero-filled buffer, no scatter, no atomics.
//
// Torch-free: included by csrc/cpu/maxout.cpp and csrc/cuda/maxout.cu. The CUDA kernels' bodies and launch
// geometry live here too (maxout_*_thread, maxout_*_launch), so that cpp_tests/kernel_grid_maxout.cpp runs
// every thread of their launch grids on the host.
#pragma once

#include <stdint.h>

#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/fast_divider.h"
#include "cifarops/macros.h"
#include "cifarops/philox.h"
#include "cifarops/rounding.h"
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

// Strides of the logical (outer, channel, inner) view, in elements. index_t: the offset's type, 32-bit on the
// kernels' 32-bit paths (dense tensors of fewer than 2^31 elements, where every offset fits).
template <typename T>
struct NonDeduced {  // a parameter type that takes the template argument given (or the default), not the call's
  using type = T;
};

struct Strides3 {
  int64_t outer = 0, channel = 0, inner = 0;
  template <typename index_t = int64_t>
  CIFAROPS_INLINE index_t at(typename NonDeduced<index_t>::type o, typename NonDeduced<index_t>::type c,
                             typename NonDeduced<index_t>::type i) const {
    return o * static_cast<index_t>(outer) + c * static_cast<index_t>(channel) + i * static_cast<index_t>(inner);
  }
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
  // The 32-bit index paths' divisions (maxout_split and the backward's group and piece), made on the host.
  FastDivider by_inner, by_groups, by_channels, by_pieces;
  // The forward's rows of four (maxout_rows_of_four, set by the host with the pointers): the CUDA forward walks
  // four outputs of a row a step and moves each piece and output as one vector.
  bool rows_of_four = false;

  CIFAROPS_INLINE int64_t groups() const { return group_count; }
  CIFAROPS_INLINE int64_t output_numel() const { return outer * groups() * inner; }
  CIFAROPS_INLINE int64_t input_numel() const { return outer * channels * inner; }
  // Channel of `piece` in group `j`, and back (group_of / piece_of divide: once per row or plane, not per
  // element in a hot loop).
  template <typename index_t = int64_t>
  CIFAROPS_INLINE index_t channel_of(typename NonDeduced<index_t>::type j, typename NonDeduced<index_t>::type piece) const {
    return strided_grouping ? piece * static_cast<index_t>(group_count) + j : j * static_cast<index_t>(pieces) + piece;
  }
  CIFAROPS_INLINE int64_t group_of(int64_t c) const { return strided_grouping ? c % groups() : c / pieces; }
  CIFAROPS_INLINE int64_t piece_of(int64_t c) const { return strided_grouping ? c / groups() : c % pieces; }
};

// The Philox counter of output (o, j, i)'s draw: its logical index in (outer, groups, inner) order, stream 0.
CIFAROPS_INLINE int64_t maxout_draw_index(const MaxoutParams& p, int64_t o, int64_t j, int64_t i) {
  return (o * p.groups() + j) * p.inner + i;
}

// Outputs (o, j, i .. i + kLanes - 1) of one row: writes the values and, for Max and Sample, the pieces. Each
// piece is loaded, and the outputs stored, as one kLanes-element packet (kLanes > 1: the CUDA forward's rows of
// four, where the caller has checked maxout_rows_of_four). u[k]: lane k's uniform
// philox_uniform(state, maxout_draw_index(p, o, j, i + k), 0) for Sample (the caller draws it, four at a time with
// philox_quad where its loop walks consecutive indices), ignored otherwise. Every lane computes exactly what
// kLanes = 1 does for it, in the same order: the CPU op and every kernel path give the same bits.
template <typename scalar_t, typename index_t = int64_t, int kLanes = 1>
CIFAROPS_INLINE void maxout_forward_lanes(const MaxoutParams& p, index_t o, index_t j, index_t i,
                                          const float (&u)[kLanes]) {
  using acc_t = typename OpMath<scalar_t>::type;
  using Values = Packet<scalar_t, kLanes>;
  const scalar_t* x = static_cast<const scalar_t*>(p.input);
  const auto load = [&](int64_t piece, acc_t (&v)[kLanes]) {
    const index_t c = p.channel_of<index_t>(j, static_cast<index_t>(piece));
    const Values packet = *reinterpret_cast<const Values*>(x + p.in_strides.at<index_t>(o, c, i));
    for (int k = 0; k < kLanes; ++k) v[k] = to_acc<acc_t>(packet.v[k]);
  };
  // First maximum, NaN included: the first NaN wins and propagates.
  acc_t best[kLanes], y[kLanes];
  int64_t arg[kLanes];
  load(0, best);
  for (int k = 0; k < kLanes; ++k) arg[k] = 0;
  for (int64_t piece = 1; piece < p.pieces; ++piece) {
    acc_t v[kLanes];
    load(piece, v);
    for (int k = 0; k < kLanes; ++k) {
      if (!CIFAROPS_ISNAN(best[k]) && (v[k] > best[k] || CIFAROPS_ISNAN(v[k]))) {
        best[k] = v[k];
        arg[k] = piece;
      }
    }
  }
  for (int k = 0; k < kLanes; ++k) y[k] = best[k];
  const acc_t lambda = static_cast<acc_t>(p.inverse_temperature);
  if (p.mode == MaxoutMode::Expectation) {
    // softmax(lambda z) with the maximum subtracted (weights in (0, 1]), PyTorch's softmax for a +inf maximum
    // (NaN), and a NaN maximum kept.
    acc_t total[kLanes], weighted[kLanes];
    for (int k = 0; k < kLanes; ++k) total[k] = weighted[k] = 0;
    for (int64_t piece = 0; piece < p.pieces; ++piece) {
      acc_t v[kLanes];
      load(piece, v);
      for (int k = 0; k < kLanes; ++k) {
        const acc_t w = CIFAROPS_EXP(lambda * (v[k] - best[k]));
        total[k] += w;
        weighted[k] += w * v[k];
      }
    }
    for (int k = 0; k < kLanes; ++k) y[k] = CIFAROPS_ISNAN(best[k]) ? best[k] : weighted[k] / total[k];
  } else if (p.mode == MaxoutMode::Sample) {
    // Inverse CDF of softmax(lambda z) with one Philox uniform per output element: the first piece whose
    // cumulative weight passes u * total, the last one if rounding leaves none. It decides in float32 with
    // draw_exp and once-rounded operations (cifarops/rounding.h), whatever the dtype: the same piece on every
    // backend. A piece equal to the maximum weighs 1: for a +inf maximum exp(inf - inf) is NaN, and the limit of
    // the softmax draws the +inf piece. A NaN maximum keeps its piece and value.
    const auto weight = [&](acc_t v, acc_t top) {
      return v == top ? 1.0f : draw_exp(static_cast<float>(lambda * (v - top)));
    };
    float total[kLanes], target[kLanes], cumulative[kLanes];
    bool drawn[kLanes];
    for (int k = 0; k < kLanes; ++k) total[k] = cumulative[k] = 0.0f;
    for (int64_t piece = 0; piece < p.pieces; ++piece) {
      acc_t v[kLanes];
      load(piece, v);
      for (int k = 0; k < kLanes; ++k) total[k] = rn_add(total[k], weight(v[k], best[k]));
    }
    for (int k = 0; k < kLanes; ++k) {
      target[k] = rn_mul(u[k], total[k]);
      drawn[k] = CIFAROPS_ISNAN(best[k]);
    }
    for (int64_t piece = 0; piece < p.pieces; ++piece) {
      acc_t v[kLanes];
      load(piece, v);
      for (int k = 0; k < kLanes; ++k) {
        if (drawn[k]) continue;
        cumulative[k] = rn_add(cumulative[k], weight(v[k], best[k]));
        if (target[k] < cumulative[k] || piece == p.pieces - 1) {
          arg[k] = piece;
          y[k] = v[k];
          drawn[k] = true;
        }
      }
    }
  }
  const index_t out = p.out_strides.at<index_t>(o, j, i);
  Values result;
  for (int k = 0; k < kLanes; ++k) result.v[k] = from_acc<scalar_t>(y[k]);
  *reinterpret_cast<Values*>(static_cast<scalar_t*>(p.output) + out) = result;
  if (p.mode != MaxoutMode::Expectation) {
    Packet<uint8_t, kLanes> chosen;
    for (int k = 0; k < kLanes; ++k) chosen.v[k] = static_cast<uint8_t>(arg[k]);
    *reinterpret_cast<Packet<uint8_t, kLanes>*>(p.index + out) = chosen;
  }
}

// Output element (o, j, i) alone (the CPU op's generic path, the kernels' one output a step).
template <typename scalar_t, typename index_t = int64_t>
CIFAROPS_INLINE void maxout_forward_element(const MaxoutParams& p, index_t o, index_t j, index_t i, float u) {
  const float lane[1] = {u};
  maxout_forward_lanes<scalar_t, index_t, 1>(p, o, j, i, lane);
}

// grad_input (o, c, i) for Max and Sample: the output's gradient if this piece was chosen, else 0. j and
// piece: group_of(c) and piece_of(c), computed by the caller.
template <typename scalar_t, typename index_t = int64_t>
CIFAROPS_INLINE void maxout_backward_element(const MaxoutParams& p, index_t o, index_t c, index_t i, index_t j,
                                             index_t piece) {
  const index_t out = p.out_strides.at<index_t>(o, j, i);
  const bool chosen = p.index[out] == piece;
  static_cast<scalar_t*>(p.grad_input)[p.in_strides.at<index_t>(o, c, i)] =
      chosen ? static_cast<const scalar_t*>(p.grad_output)[out] : from_acc<scalar_t>(0.0f);
}

// grad_input (o, c, i) for Expectation: dy * p_c * (1 + lambda * (z_c - y)), the softmax-weighted gradient
// including the softmax's own derivative (y = sum_i p_i z_i, dp_i/dz_c = lambda p_i (delta_ic - p_c)).
// j: group_of(c), computed by the caller.
template <typename scalar_t, typename index_t = int64_t>
CIFAROPS_INLINE void maxout_expectation_backward_element(const MaxoutParams& p, index_t o, index_t c, index_t i,
                                                         index_t j) {
  using acc_t = typename OpMath<scalar_t>::type;
  const scalar_t* x = static_cast<const scalar_t*>(p.input);
  const acc_t lambda = static_cast<acc_t>(p.inverse_temperature);
  acc_t best = to_acc<acc_t>(x[p.in_strides.at<index_t>(o, p.channel_of<index_t>(j, 0), i)]);
  for (int64_t piece = 1; piece < p.pieces; ++piece) {
    const acc_t v = to_acc<acc_t>(x[p.in_strides.at<index_t>(o, p.channel_of<index_t>(j, static_cast<index_t>(piece)), i)]);
    best = v > best || CIFAROPS_ISNAN(v) ? v : best;
  }
  acc_t total = 0, weighted = 0;
  for (int64_t piece = 0; piece < p.pieces; ++piece) {
    const acc_t v = to_acc<acc_t>(x[p.in_strides.at<index_t>(o, p.channel_of<index_t>(j, static_cast<index_t>(piece)), i)]);
    const acc_t w = CIFAROPS_EXP(lambda * (v - best));
    total += w;
    weighted += w * v;
  }
  const acc_t z = to_acc<acc_t>(x[p.in_strides.at<index_t>(o, c, i)]);
  const acc_t y = weighted / total;
  const acc_t prob = CIFAROPS_EXP(lambda * (z - best)) / total;
  const acc_t dy = to_acc<acc_t>(static_cast<const scalar_t*>(p.grad_output)[p.out_strides.at<index_t>(o, j, i)]);
  static_cast<scalar_t*>(p.grad_input)[p.in_strides.at<index_t>(o, c, i)] =
      from_acc<scalar_t>(dy * prob * (acc_t(1) + lambda * (z - y)));
}

// ------------------------------------------------------------------------ the CUDA kernels, host-runnable
//
// One thread per output element in forward (four consecutive ones for the probabilistic draw in NCHW order,
// which share one Philox call), one per input element in backward, in grid-stride loops of kElementwiseThreads
// threads a block. Consecutive threads take consecutive addresses: along the inner dims in NCHW, along the
// channels in channels_last (kChannelFastest). Index and offset math is 32-bit below 2^31 input elements (the
// grid-stride step stays below 2^24, so t + step fits in uint32 too; the splits use the host-made dividers), else
// 64-bit.
struct MaxoutLaunch {
  bool launch = true;  // false: nothing to do (no elements, no state to write)
  bool channel_fastest = false, quad = false, small = false;
  unsigned blocks = 1;
};

// Channels at unit stride below the inner dims: channels_last with dim = 1.
CIFAROPS_INLINE bool maxout_channel_fastest(const MaxoutParams& p) { return p.in_strides.channel < p.in_strides.inner; }

// Whether the forward can take its outputs four at a time along unit-stride rows, each piece and the outputs
// moved as one aligned vector of four: NCHW order, rows (inner sizes) a multiple of four, every row starting
// four-aligned (all strides but the inner one multiples of four, the pointers aligned to a packet of four).
// element_size: the input's and output's bytes per element.
inline bool maxout_rows_of_four(const MaxoutParams& p, int64_t element_size) {
  const auto fours = [](int64_t n) { return n % 4 == 0; };
  const auto aligned = [](const void* ptr, int64_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; };
  return p.output_numel() > 0 && !maxout_channel_fastest(p) && fours(p.inner) && p.in_strides.inner == 1 &&
         p.out_strides.inner == 1 && fours(p.in_strides.channel) && fours(p.in_strides.outer) &&
         fours(p.out_strides.channel) && fours(p.out_strides.outer) && aligned(p.input, 4 * element_size) &&
         aligned(p.output, 4 * element_size) && (p.index == nullptr || aligned(p.index, 4));
}

// At least one block for a drawing forward, which writes its state even for no elements. Four outputs a step
// (kQuad) for every mode in rows of four, and for the draw in NCHW order (its Philox quads) without them.
inline MaxoutLaunch maxout_forward_launch(const MaxoutParams& p) {
  const int64_t total = p.output_numel();
  const bool draws = p.mode == MaxoutMode::Sample;
  MaxoutLaunch launch;
  launch.launch = total > 0 || draws;
  launch.channel_fastest = total > 0 && maxout_channel_fastest(p);
  launch.quad = !launch.channel_fastest && (draws || p.rows_of_four);
  launch.blocks = elementwise_blocks(launch.quad ? (total + 3) / 4 : total);
  launch.small = p.input_numel() < (int64_t(1) << 31);  // 32-bit offsets into the input (the larger) too
  return launch;
}

inline MaxoutLaunch maxout_backward_launch(const MaxoutParams& p) {
  const int64_t total = p.input_numel();
  MaxoutLaunch launch;
  launch.launch = total > 0;
  launch.channel_fastest = maxout_channel_fastest(p);
  launch.blocks = elementwise_blocks(total);
  launch.small = total < (int64_t(1) << 31);
  return launch;
}

// Calls launcher.template operator()<index_t, kChannelFastest, kQuad>() with the forward's instantiation.
template <typename index_t, typename Launcher>
inline void maxout_forward_dispatch_layout(const MaxoutLaunch& launch, Launcher& launcher) {
  if (launch.quad) {
    launcher.template operator()<index_t, false, true>();
  } else if (launch.channel_fastest) {
    launcher.template operator()<index_t, true, false>();
  } else {
    launcher.template operator()<index_t, false, false>();
  }
}

template <typename Launcher>
inline void maxout_forward_dispatch(const MaxoutLaunch& launch, Launcher&& launcher) {
  if (launch.small) {
    maxout_forward_dispatch_layout<uint32_t>(launch, launcher);
  } else {
    maxout_forward_dispatch_layout<int64_t>(launch, launcher);
  }
}

// Calls launcher.template operator()<index_t, kChannelFastest>() with the backward's instantiation.
template <typename Launcher>
inline void maxout_backward_dispatch(const MaxoutLaunch& launch, Launcher&& launcher) {
  index_layout_dispatch(launch.small, launch.channel_fastest, launcher);
}

// Splits a linear thread index into (o, c, i) of an (outer, channels, inner) grid; `by_channels` divides by
// `channels`. 32-bit indices (below 2^31) divide with the host-made dividers, 64-bit ones with `/`.
template <typename index_t, bool kChannelFastest>
CIFAROPS_INLINE void maxout_split(const MaxoutParams& p, index_t t, index_t channels, const FastDivider& by_channels,
                                  index_t& o, index_t& c, index_t& i) {
  const index_t inner = static_cast<index_t>(p.inner);
  if constexpr (sizeof(index_t) == 4) {
    uint32_t rest;
    if (kChannelFastest) {
      by_channels.divmod(t, rest, c);
      p.by_inner.divmod(rest, o, i);
    } else {
      p.by_inner.divmod(t, rest, i);
      by_channels.divmod(rest, o, c);
    }
  } else if (kChannelFastest) {
    c = t % channels;
    t /= channels;
    i = t % inner;
    o = t / inner;
  } else {
    i = t % inner;
    t /= inner;
    c = t % channels;
    o = t / channels;
  }
}

// Group and piece of channel c (the backward's), in index_t.
template <typename index_t>
CIFAROPS_INLINE void maxout_group_piece(const MaxoutParams& p, index_t c, index_t& j, index_t& piece) {
  if constexpr (sizeof(index_t) == 4) {
    if (p.strided_grouping) {
      p.by_groups.divmod(c, piece, j);
    } else {
      p.by_pieces.divmod(c, j, piece);
    }
  } else {
    const index_t groups = static_cast<index_t>(p.groups()), pieces = static_cast<index_t>(p.pieces);
    j = p.strided_grouping ? c % groups : c / pieces;
    piece = p.strided_grouping ? c / groups : c % pieces;
  }
}

// Thread `thread` of block `block` in a grid of `blocks` blocks: its grid-stride loop over the outputs.
// kQuad (NCHW order, where the thread order is the draw's logical order): each step takes the four outputs
// 4q .. 4q + 3 and, for Sample, one philox_quad; in rows of four as one row of vectors (neighbouring lanes on
// neighbouring 4-element packets), else one output at a time (lanes 4 outputs apart: the draw's fallback for
// rows not a multiple of four or unaligned). Otherwise one output a step, and for Sample one philox_uniform of the
// output's logical index. `state`: the resolved RNG state (Sample only).
template <typename scalar_t, typename index_t, bool kChannelFastest, bool kQuad>
CIFAROPS_INLINE void maxout_forward_thread(const MaxoutParams& p, PhiloxState state, index_t block, index_t thread,
                                           index_t blocks) {
  const bool draws = p.mode == MaxoutMode::Sample;
  const index_t total = static_cast<index_t>(p.output_numel());
  const index_t groups = static_cast<index_t>(p.groups());
  const index_t step = blocks * kElementwiseThreads;
  const index_t first = block * kElementwiseThreads + thread;
  if constexpr (kQuad) {
    const index_t quads = total / 4 + (total % 4 != 0);
    for (index_t q = first; q < quads; q += step) {
      const Philox4 words = draws ? philox_quad(state, static_cast<uint64_t>(q), 0) : Philox4{};
      if (p.rows_of_four) {  // the four outputs are (o, j, i .. i + 3) of one row
        index_t o, j, i;
        maxout_split<index_t, false>(p, q * 4, groups, p.by_groups, o, j, i);
        const float u[4] = {philox_bits_to_uniform(words.v[0]), philox_bits_to_uniform(words.v[1]),
                            philox_bits_to_uniform(words.v[2]), philox_bits_to_uniform(words.v[3])};
        maxout_forward_lanes<scalar_t, index_t, 4>(p, o, j, i, u);
        continue;
      }
#if defined(__CUDACC__)
#pragma unroll
#endif
      for (int k = 0; k < 4; ++k) {
        const index_t t = q * 4 + k;
        if (t >= total) break;
        index_t o, j, i;
        maxout_split<index_t, false>(p, t, groups, p.by_groups, o, j, i);
        // k is a constant once unrolled: no quad in local memory.
        maxout_forward_element<scalar_t, index_t>(p, o, j, i, philox_bits_to_uniform(words.v[k]));
      }
    }
  } else {
    for (index_t t = first; t < total; t += step) {
      index_t o, j, i;
      maxout_split<index_t, kChannelFastest>(p, t, groups, p.by_groups, o, j, i);
      const float u = draws ? philox_uniform(state, static_cast<uint64_t>(maxout_draw_index(p, o, j, i)), 0) : 0.0f;
      maxout_forward_element<scalar_t, index_t>(p, o, j, i, u);
    }
  }
}

// Thread `thread` of block `block`: its grid-stride loop over the input gradient's elements.
template <typename scalar_t, typename index_t, bool kChannelFastest>
CIFAROPS_INLINE void maxout_backward_thread(const MaxoutParams& p, index_t block, index_t thread, index_t blocks) {
  const index_t total = static_cast<index_t>(p.input_numel());
  const index_t channels = static_cast<index_t>(p.channels);
  const index_t step = blocks * kElementwiseThreads;
  for (index_t t = block * kElementwiseThreads + thread; t < total; t += step) {
    index_t o, c, i, j, piece;
    maxout_split<index_t, kChannelFastest>(p, t, channels, p.by_channels, o, c, i);
    maxout_group_piece<index_t>(p, c, j, piece);
    if (p.mode == MaxoutMode::Expectation) {
      maxout_expectation_backward_element<scalar_t, index_t>(p, o, c, i, j);
    } else {
      maxout_backward_element<scalar_t, index_t>(p, o, c, i, j, piece);
    }
  }
}

}  // namespace cifarops
