// Fractional max-pooling's shared math (SPEC.md; Graham, arXiv 1412.6071). Each plane (n, c) is pooled
// over regions that are products of a row region and a column region; along an axis, output i pools
// [begin_i, end_i):
//   Window (PyTorch's nn.FractionalMaxPool2d): begin_i = ATen's generate_intervals(u), end_i = begin_i + k.
//   Disjoint (Graham):    [a_i, a_{i+1});   Overlapping (Graham): [a_i, a_{i+1} + 1) clipped to the plane,
// with a_i = floor(alpha (i + u)) - floor(alpha u), alpha = in / out (pseudorandom), or a_i read from an
// explicit boundary table (random sequences, or any sequence a test wants).
// begin_i and end_i never decrease with i, so the outputs whose regions contain input x along an axis are a
// contiguous run found by binary search: that is how backward gathers (each input sums the gradients of the
// outputs that chose it, in row-major output order, as ATen's CPU loop adds them) without atomics.
//
// Draws made by the op (neither samples nor boundaries given) come from the call's PhiloxState
// (cifarops/philox.h), the same numbers on every backend (python/cifarops/reference/ is the oracle):
//   stream 0, pseudorandom sequences and windows: u of (n, c', axis) is philox_uniform at logical index
//     (n * C' + c') * 2 + axis, with C' = 1 and c' = 0 when shared per image (else C' = C, c' = c), converted to
//     the input's dtype by rounding to nearest and, where that reaches 1, replaced by the largest value below 1;
//   stream 1, random sequences: the steps of (n, c', axis) by selection sampling (Knuth's algorithm S): step i
//     is 2 when bits24(i) * (out - i) < twos_left * 2^24, bits24 the top 24 bits of the Philox word at logical
//     index ((n * C' + c') * 2 + axis) * L + i, L = max(out_h, out_w), twos_left = in - out minus the twos so
//     far: exactly in - out twos, each placement equally likely (to 24 bits).
// Regions are clamped to the plane, so no sample or boundary value can make a kernel read out of bounds.
// Torch-free: included by csrc/cpu/fractional_max_pool2d.cpp and csrc/cuda/fractional_max_pool2d.cu. The CUDA
// kernels' bodies and launch geometry live here too (fmp_*_thread, fmp_launch), so that
// cpp_tests/kernel_grid_fmp.cpp runs every thread of their launch grids on the host.
#pragma once

#include <stdint.h>

#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/fast_divider.h"
#include "cifarops/macros.h"
#include "cifarops/philox.h"
#include "cifarops/tensor_types.h"

#if defined(__CUDACC__)
#include <math.h>
#define CIFAROPS_FMP_ISNAN(x) isnan(x)
#define CIFAROPS_FMP_FLOOR(x) floor(x)
#else
#include <cmath>
#define CIFAROPS_FMP_ISNAN(x) std::isnan(x)
#define CIFAROPS_FMP_FLOOR(x) std::floor(x)
#endif

namespace cifarops {

enum class FmpRegions : int { Window = 0, Disjoint = 1, Overlapping = 2 };

// One spatial axis. samples[..., 0] and boundaries[..., 0, :] belong to the columns (width), index 1 to the
// rows (height): PyTorch's order for _random_samples.
struct FmpAxis {
  int64_t in = 0, out = 0;
  int64_t kernel = 0;  // Window: the window size k
  int64_t span = 0;    // the widest region: k, 2 (Disjoint) or 3 (Overlapping); offsets in a region are < span
  // Window: (in - k) / (out - 1) as ATen rounds it in the interval type. Graham's regions need none (integer math).
  double alpha = 0;
  double inv_out = 0;  // Graham: 1 / out, so that fmp_floor_div divides by out with a multiply
};

// Strides of an (n, c, h, w) tensor, in elements.
struct Strides4 {
  int64_t n = 0, c = 0, h = 0, w = 0;
  CIFAROPS_INLINE int64_t at(int64_t in, int64_t ic, int64_t ih, int64_t iw) const {
    return in * n + ic * c + ih * h + iw * w;
  }
};

struct FmpParams {
  const void* input = nullptr;        // (N, C, rows.in, cols.in), in_strides
  void* output = nullptr;             // (N, C, rows.out, cols.out), out_strides
  void* index = nullptr;              // out_strides; int64 flat h * W + w (PyTorch's) or uint8 offset in region
  const void* grad_output = nullptr;  // out_strides
  void* grad_input = nullptr;         // in_strides
  const void* samples = nullptr;      // u in [0, 1) per (n, c, axis), input's dtype; nullptr with boundaries
  int64_t sample_stride_n = 0, sample_stride_c = 0, sample_stride_axis = 0;
  const int64_t* boundaries = nullptr;  // a_0..a_out per (n, c, axis); Disjoint / Overlapping only
  int64_t boundary_stride_n = 0, boundary_stride_c = 0, boundary_stride_axis = 0, boundary_stride_i = 0;
  int64_t batch = 0, channels = 0;
  FmpAxis rows, cols;
  Strides4 in_strides, out_strides;
  FmpRegions regions = FmpRegions::Window;
  bool wide_index = false;  // int64 flat indices rather than one byte per output
  // Neither samples nor boundaries: the kernel draws u from the call's PhiloxState (stream 0), per
  // (n, draw_channel(c), axis); draw_channels is 1 when shared per image, else C.
  bool draw = false;
  int64_t draw_channels = 0;
  float sample_max = 0;  // the largest value of the input's dtype below 1
  // Explicit samples or boundaries in device memory, whose values the host did not read: every thread checks the
  // draws it uses (FmpSequence::check_step, the samples in fmp_plane_sequences; CIFAROPS_KERNEL_CHECK), so that bad ones stop the kernel, as the CPU op raises,
  // instead of making the gather skip outputs or the one-byte index alias. The CPU ops read them on the host.
  bool check_draws = false;
  // The 32-bit index path's split of a thread index (fmp_split) into (n, c, h, w) of the grid's sizes (the
  // outputs' in forward, the inputs' in backward), made on the host: by C, by the height and by the width.
  FastDivider by_channels, by_height, by_width;

  CIFAROPS_INLINE int64_t planes() const { return batch * channels; }
  CIFAROPS_INLINE int64_t output_numel() const { return planes() * rows.out * cols.out; }
  CIFAROPS_INLINE int64_t input_numel() const { return planes() * rows.in * cols.in; }
};

constexpr uint32_t kFmpSampleStream = 0, kFmpSequenceStream = 1, kFmpStreams = 2;

// A drawn uniform as a sample in the compute type: the input's dtype's value of it, never 1.
template <typename scalar_t, typename acc_t>
CIFAROPS_INLINE acc_t fmp_sample_of(const FmpParams& p, float u) {
  const acc_t v = to_acc<acc_t>(from_acc<scalar_t>(u));
  return v < acc_t(1) ? v : static_cast<acc_t>(p.sample_max);
}

// The last Philox quad a loop over consecutive planes drew (the CPU kernels' plane loops): two neighbouring
// planes' samples share a quad. The GPU kernels pass none.
struct FmpQuadCache {
  uint64_t quad = ~uint64_t(0);
  Philox4 words{};
};

// The drawn u of both axes of (n, c) (u[0] the columns, u[1] the rows): their logical indices 2k and 2k + 1
// fall in one Philox quad, so one Philox call gives both.
template <typename scalar_t, typename acc_t>
CIFAROPS_INLINE void fmp_drawn_samples(const FmpParams& p, PhiloxState state, int64_t n, int64_t c, acc_t u[2],
                                       FmpQuadCache* cache) {
  const int64_t draw_c = p.draw_channels == 1 ? 0 : c;
  const uint64_t index = static_cast<uint64_t>((n * p.draw_channels + draw_c) * 2);
  Philox4 words;
  if (cache == nullptr) {
    words = philox_quad(state, index / 4, kFmpSampleStream);
  } else {
    if (cache->quad != index / 4) {
      cache->quad = index / 4;
      cache->words = philox_quad(state, index / 4, kFmpSampleStream);
    }
    words = cache->words;
  }
  const bool low = index % 4 == 0;  // index is even: words 0 and 1, or 2 and 3
  u[0] = fmp_sample_of<scalar_t, acc_t>(p, philox_bits_to_uniform(low ? words.v[0] : words.v[2]));
  u[1] = fmp_sample_of<scalar_t, acc_t>(p, philox_bits_to_uniform(low ? words.v[1] : words.v[3]));
}

// Graham's random sequence of draw plane `draw_plane` (n * C' + c') and axis (0: columns, 1: rows), a_0..a_out
// written at a[i * stride] and padded with `in` up to a[(length - 1) * stride]: selection sampling (see above).
CIFAROPS_INLINE void fmp_random_sequence(PhiloxState state, int64_t draw_plane, int axis_index, int64_t in,
                                         int64_t out, int64_t max_out, int64_t length, int64_t* a, int64_t stride) {
  const uint64_t base = static_cast<uint64_t>((draw_plane * 2 + axis_index) * max_out);
  int64_t twos_left = in - out, position = 0;
  a[0] = 0;
  Philox4 quad{};
  uint64_t quad_index = ~uint64_t(0);
  for (int64_t i = 0; i < out; ++i) {
    const uint64_t index = base + static_cast<uint64_t>(i);
    if (index / 4 != quad_index) {
      quad_index = index / 4;
      quad = philox_quad(state, quad_index, kFmpSequenceStream);
    }
    const uint64_t bits = philox_word(quad, index % 4) >> 8;
    const bool two = bits * static_cast<uint64_t>(out - i) < (static_cast<uint64_t>(twos_left) << 24);
    twos_left -= two ? 1 : 0;
    position += two ? 2 : 1;
    a[(i + 1) * stride] = position;
  }
  for (int64_t i = out + 1; i < length; ++i) a[i * stride] = in;
}

CIFAROPS_INLINE int64_t fmp_clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// ATen's generate_intervals / get_interval, operation for operation in interval_t: the storage type on
// the CPU (ATen's CPU kernel computes in scalar_t, so half and bfloat16 round after every operation) and the
// compute type on CUDA (ATen's CUDA kernel uses acc_type). Clamped to [0, in - k]: ATen's CPU kernel fails
// an internal assert where bfloat16 rounding overshoots.
template <typename interval_t>
CIFAROPS_INLINE int64_t fmp_window_start(interval_t u, int64_t i, const FmpAxis& a) {
  using wide_t = typename OpMath<interval_t>::type;  // float for half types: how ATen converts ints and casts
  if (i >= a.out - 1) return a.in - a.kernel;
  const interval_t alpha = static_cast<interval_t>(static_cast<wide_t>(a.alpha));
  const interval_t shifted = static_cast<interval_t>(static_cast<wide_t>(i)) + u;
  const int start = static_cast<int>(static_cast<wide_t>(shifted * alpha)) - static_cast<int>(static_cast<wide_t>(u * alpha));
  return fmp_clamp(start, 0, a.in - a.kernel);
}

// fmp_window_start of outputs 0 .. out - 1 into begin[], operation for operation, in a branch-free loop the
// compiler vectorises (the CPU kernels fill a plane's tables with it).
template <typename interval_t>
CIFAROPS_INLINE void fmp_window_starts(interval_t u, const FmpAxis& a, int64_t* begin) {
  using wide_t = typename OpMath<interval_t>::type;
  const interval_t alpha = static_cast<interval_t>(static_cast<wide_t>(a.alpha));
  const int base = static_cast<int>(static_cast<wide_t>(u * alpha));
  const int high = static_cast<int>(a.in - a.kernel);
  for (int64_t i = 0; i < a.out - 1; ++i) {
    const interval_t shifted = static_cast<interval_t>(static_cast<wide_t>(i)) + u;
    const int start = static_cast<int>(static_cast<wide_t>(shifted * alpha)) - base;
    begin[i] = start < 0 ? 0 : (start > high ? high : start);
  }
  if (a.out >= 1) begin[a.out - 1] = high;
}

// Graham's pseudorandom boundary a_i = floor(alpha (i + u)) - floor(alpha u), alpha = in / out, computed exactly
// and identically on every backend (triton_kernels/fractional_max_pool2d.py's _boundary and the reference's
// fmp_regions do the same): with W = floor(in u), a_i = floor((in i + W) / out) - floor(W / out), because adding
// the fraction of in u (< 1) to the integer in i + W cannot reach the next multiple of out. Only W involves the
// sample: a float32 (or narrower) u times in < 2^29 is exact in double, a float64 u is rounded once. So every step
// a_{i+1} - a_i is floor(alpha) or ceil(alpha) by construction, the paper's rule, where the float formula broke it
// (in = 64, out = 32, u = 0.5 - 3 * 2^-22: i + u rounded differently across a power of two, a step of 3). Clamped
// so that every region keeps at least one row: i <= a_i <= in - out + i (a no-op for u in [0, 1)).
// floor(n / d) for 0 <= n < 2^62, 0 < d, with inv_d = 1.0 / d from the host: no division on the device (a 64-bit
// integer or a double division is a subroutine call on a GPU, whose register saves made FMP's backward search use
// local memory). n * inv_d is within one of the quotient (n rounds by at most 2^(62 - 53), the product's relative
// error is about 2^-52, and the quotient is at most in + 1 < 2^31), and one multiply-compare corrects it: exact.
CIFAROPS_INLINE int64_t fmp_floor_div(int64_t n, int64_t d, double inv_d) {
  int64_t q = static_cast<int64_t>(static_cast<double>(n) * inv_d);
  if (q * d > n) {
    --q;
  } else if ((q + 1) * d <= n) {
    ++q;
  }
  return q;
}

template <typename acc_t>
CIFAROPS_INLINE int64_t fmp_pseudorandom_boundary(acc_t u, int64_t i, const FmpAxis& a) {
  if (i >= a.out) return a.in;
  // u in [0, 1) makes w >= 0; an out-of-range explicit sample is clamped below like any other
  int64_t w = static_cast<int64_t>(CIFAROPS_FMP_FLOOR(static_cast<double>(a.in) * static_cast<double>(u)));
  w = w < 0 ? 0 : w;
  const int64_t raw = fmp_floor_div(a.in * i + w, a.out, a.inv_out) - fmp_floor_div(w, a.out, a.inv_out);
  return fmp_clamp(raw, i, a.in - a.out + i);
}

// The regions of one axis of one plane.
template <typename interval_t, typename acc_t>
struct FmpSequence {
  const FmpAxis* axis;
  FmpRegions regions;
  acc_t u;                      // the sample, exactly (every storage type converts to acc_t without loss)
  const int64_t* boundaries;    // nullptr: pseudorandom from u
  int64_t boundary_stride;

  CIFAROPS_INLINE int64_t boundary(int64_t i) const {
    if (boundaries == nullptr) return fmp_pseudorandom_boundary<acc_t>(u, i, *axis);
    if (i >= axis->out) return axis->in;
    if (i <= 0) return 0;
    return fmp_clamp(boundaries[i * boundary_stride], i, axis->in - axis->out + i);
  }

  CIFAROPS_INLINE void region(int64_t i, int64_t& begin, int64_t& end) const {
    if (regions == FmpRegions::Window) {
      begin = fmp_window_start<interval_t>(static_cast<interval_t>(u), i, *axis);
      end = begin + axis->kernel;
      return;
    }
    begin = boundary(i);
    end = boundary(i + 1) + (regions == FmpRegions::Overlapping ? 1 : 0);
    end = end < axis->in ? end : axis->in;
  }

  // Step i of explicit boundaries as given (before boundary()'s clamp): a_0 = 0, a_out = in and every step 1 or 2,
  // the CPU op's check. Every step is checked by some thread: forward output i checks its steps, backward input x
  // the step min(x, out - 1) (in > out).
  CIFAROPS_INLINE void check_step(int64_t i) const {
    if (boundaries == nullptr) return;
    const int64_t a = boundaries[i * boundary_stride], b = boundaries[(i + 1) * boundary_stride];
    CIFAROPS_KERNEL_CHECK(b - a >= 1 && b - a <= 2 && (i > 0 || a == 0) && (i + 1 < axis->out || b == axis->in),
                          "cifarops.fractional_max_pool2d: boundaries must start at 0, increase in steps of 1 or 2 "
                          "and reach the input size at index out (checked on the device)");
  }

  // The first output whose region ends after x (== out when none does): binary search, since ends never
  // decrease. The outputs containing x follow it for as long as their regions begin at or before x.
  CIFAROPS_INLINE int64_t first_ending_after(int64_t x) const {
    int64_t lo = 0, hi = axis->out;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      int64_t begin, end;
      region(mid, begin, end);
      if (end > x) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    return lo;
  }
};

// The row and column sequences of plane (n, c).
template <typename interval_t, typename acc_t>
struct FmpPlaneSequences {
  FmpSequence<interval_t, acc_t> rows, cols;
};

template <typename scalar_t, typename interval_t, typename acc_t>
CIFAROPS_INLINE FmpPlaneSequences<interval_t, acc_t> fmp_plane_sequences(const FmpParams& p, int64_t n, int64_t c,
                                                                         PhiloxState state,
                                                                         FmpQuadCache* cache = nullptr) {
  FmpSequence<interval_t, acc_t> axes[2];  // 0: columns, 1: rows (the samples' and boundaries' order)
  acc_t u[2] = {acc_t(0), acc_t(0)};
  if (p.draw) {
    fmp_drawn_samples<scalar_t, acc_t>(p, state, n, c, u, cache);
  } else if (p.boundaries == nullptr) {
    const scalar_t* samples = static_cast<const scalar_t*>(p.samples) + n * p.sample_stride_n + c * p.sample_stride_c;
    u[0] = to_acc<acc_t>(samples[0]);
    u[1] = to_acc<acc_t>(samples[p.sample_stride_axis]);
    if (p.check_draws) {
      CIFAROPS_KERNEL_CHECK(u[0] >= acc_t(0) && u[0] < acc_t(1) && u[1] >= acc_t(0) && u[1] < acc_t(1),
                            "cifarops.fractional_max_pool2d: samples must lie in [0, 1) (checked on the device)");
    }
  }
  for (int axis_index = 0; axis_index < 2; ++axis_index) {
    FmpSequence<interval_t, acc_t>& s = axes[axis_index];
    s.axis = axis_index == 0 ? &p.cols : &p.rows;
    s.regions = p.regions;
    s.u = u[axis_index];
    s.boundaries = nullptr;
    s.boundary_stride = 0;
    if (p.boundaries != nullptr) {
      s.boundaries = p.boundaries + n * p.boundary_stride_n + c * p.boundary_stride_c + axis_index * p.boundary_stride_axis;
      s.boundary_stride = p.boundary_stride_i;
    }
  }
  return {axes[1], axes[0]};
}

// The maximum of rows [r0, r1) x columns [c0, c1) of a plane and where it is. Row-major scan with ATen's
// rule `v > best || isnan(v)` from -inf at the region's first element: the first maximum wins, the last NaN
// wins, an all -inf region points at its first element.
template <typename scalar_t>
CIFAROPS_INLINE scalar_t fmp_region_max(const scalar_t* plane, int64_t stride_h, int64_t stride_w, int64_t r0,
                                        int64_t r1, int64_t c0, int64_t c1, int64_t& best_h, int64_t& best_w) {
  using acc_t = typename OpMath<scalar_t>::type;
  scalar_t best_value = plane[r0 * stride_h + c0 * stride_w];
  acc_t best = -static_cast<acc_t>(INFINITY);
  best_h = r0;
  best_w = c0;
  for (int64_t h = r0; h < r1; ++h) {
    for (int64_t w = c0; w < c1; ++w) {
      const scalar_t raw = plane[h * stride_h + w * stride_w];
      const acc_t v = to_acc<acc_t>(raw);
      if (v > best || CIFAROPS_FMP_ISNAN(v)) {
        best = v;
        best_value = raw;
        best_h = h;
        best_w = w;
      }
    }
  }
  return best_value;
}

// Records output `out`'s choice: PyTorch's flat index h * W + w, or the offset inside the region.
CIFAROPS_INLINE void fmp_store_choice(const FmpParams& p, int64_t out, int64_t h, int64_t w, int64_t r0, int64_t c0) {
  if (p.wide_index) {
    static_cast<int64_t*>(p.index)[out] = h * p.cols.in + w;
  } else {
    static_cast<uint8_t*>(p.index)[out] = static_cast<uint8_t>((h - r0) * p.cols.span + (w - c0));
  }
}

// Output (n, c, oh, ow).
template <typename scalar_t, typename interval_t>
CIFAROPS_INLINE void fmp_forward_element(const FmpParams& p, PhiloxState state, int64_t n, int64_t c, int64_t oh, int64_t ow) {
  using acc_t = typename OpMath<scalar_t>::type;
  const auto [rows, cols] = fmp_plane_sequences<scalar_t, interval_t, acc_t>(p, n, c, state);
  if (p.check_draws) {
    rows.check_step(oh);
    cols.check_step(ow);
  }
  int64_t r0, r1, c0, c1, h, w;
  rows.region(oh, r0, r1);
  cols.region(ow, c0, c1);
  const scalar_t* plane = static_cast<const scalar_t*>(p.input) + p.in_strides.at(n, c, 0, 0);
  const scalar_t y = fmp_region_max(plane, p.in_strides.h, p.in_strides.w, r0, r1, c0, c1, h, w);
  const int64_t out = p.out_strides.at(n, c, oh, ow);
  static_cast<scalar_t*>(p.output)[out] = y;
  fmp_store_choice(p, out, h, w, r0, c0);
}

// The input that output `out` chose, as a flat h * W + w, given the output's region start. Whatever the
// index holds, only a choice inside the output's region receives a gradient (gather and scatter agree).
CIFAROPS_INLINE int64_t fmp_chosen(const FmpParams& p, int64_t out, int64_t r0, int64_t c0) {
  if (p.wide_index) return static_cast<const int64_t*>(p.index)[out];
  const uint32_t offset = static_cast<const uint8_t*>(p.index)[out], span = static_cast<uint32_t>(p.cols.span);
  return (r0 + offset / span) * p.cols.in + c0 + offset % span;  // 32-bit: offsets and spans are below 256
}

CIFAROPS_INLINE bool fmp_inside(const FmpParams& p, int64_t flat, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  if (flat < 0) return false;
  int64_t h, w;
  if (flat <= INT32_MAX && p.cols.in <= INT32_MAX) {  // 32-bit division: every realistic plane
    const uint32_t f = static_cast<uint32_t>(flat), width = static_cast<uint32_t>(p.cols.in);
    h = f / width;
    w = f % width;
  } else {
    h = flat / p.cols.in;
    w = flat % p.cols.in;
  }
  return h >= r0 && h < r1 && w >= c0 && w < c1;
}

// grad_input (n, c, h, w): the sum of grad_output over the outputs that chose (h, w), added in row-major
// output order and rounded to scalar_t after each addition, as ATen's CPU loop does (grad_input[i] += g).
template <typename scalar_t, typename interval_t>
CIFAROPS_INLINE void fmp_backward_element(const FmpParams& p, PhiloxState state, int64_t n, int64_t c, int64_t h, int64_t w) {
  using acc_t = typename OpMath<scalar_t>::type;
  const auto [rows, cols] = fmp_plane_sequences<scalar_t, interval_t, acc_t>(p, n, c, state);
  if (p.check_draws) {
    rows.check_step(h < p.rows.out ? h : p.rows.out - 1);
    cols.check_step(w < p.cols.out ? w : p.cols.out - 1);
  }
  const scalar_t* grad_output = static_cast<const scalar_t*>(p.grad_output);
  const int64_t target = h * p.cols.in + w;
  const int64_t first_col = cols.first_ending_after(w);
  scalar_t sum = from_acc<scalar_t>(acc_t(0));
  for (int64_t oh = rows.first_ending_after(h); oh < p.rows.out; ++oh) {
    int64_t r0, r1;
    rows.region(oh, r0, r1);
    if (r0 > h) break;
    for (int64_t ow = first_col; ow < p.cols.out; ++ow) {
      int64_t c0, c1;
      cols.region(ow, c0, c1);
      if (c0 > w) break;
      const int64_t out = p.out_strides.at(n, c, oh, ow);
      if (fmp_chosen(p, out, r0, c0) == target) {
        sum = from_acc<scalar_t>(to_acc<acc_t>(sum) + to_acc<acc_t>(grad_output[out]));
      }
    }
  }
  static_cast<scalar_t*>(p.grad_input)[p.in_strides.at(n, c, h, w)] = sum;
}

// ------------------------------------------------------------------------ the CUDA kernels, host-runnable
//
// One thread per output in forward, one per input in backward (which gathers), in grid-stride loops of
// kElementwiseThreads threads a block; interval arithmetic in the compute type, as ATen's CUDA kernel does.
// Consecutive threads take consecutive addresses: along the width in NCHW, along the channels in channels_last
// (kChannelFastest). Thread indices split in 32 bits when the grid has fewer than 2^31 items (minus what the
// last grid stride may overshoot). Random sequences first get their boundary table from fmp_table_thread.
struct FmpLaunch {
  bool launch = true;  // false: nothing to do (a backward with no elements)
  bool channel_fastest = false, small = false;
  int64_t total = 0;   // the grid's items: outputs (forward) or inputs (backward)
  unsigned blocks = 1;
};

// At least one block, also for an empty forward: it writes the state.
inline FmpLaunch fmp_launch(const FmpParams& p, bool forward) {
  FmpLaunch launch;
  launch.total = forward ? p.output_numel() : p.input_numel();
  launch.launch = forward || launch.total > 0;
  launch.channel_fastest = p.in_strides.c < p.in_strides.w;  // channels_last
  launch.small = launch.total < INT32_MAX - int64_t(65536) * kElementwiseThreads;
  launch.blocks = elementwise_blocks(launch.total);
  return launch;
}

// Calls launcher.template operator()<index_t, kChannelFastest>() with the instantiation `launch` needs.
template <typename Launcher>
inline void fmp_dispatch(const FmpLaunch& launch, Launcher&& launcher) {
  index_layout_dispatch(launch.small, launch.channel_fastest, launcher);
}

// Splits a linear thread index into (n, c, h, w) of an (N, C, height, width) grid, in index_t arithmetic: 32-bit
// indices with the host-made dividers, 64-bit ones with `/`.
template <typename index_t, bool kChannelFastest>
CIFAROPS_INLINE void fmp_split(const FmpParams& p, index_t t, index_t channels, index_t height, index_t width,
                               int64_t& n, int64_t& c, int64_t& h, int64_t& w) {
  if constexpr (sizeof(index_t) == 4) {
    uint32_t rest, plane, cc, hh, ww, nn;
    if (kChannelFastest) {
      p.by_channels.divmod(t, rest, cc);
      p.by_width.divmod(rest, plane, ww);
      p.by_height.divmod(plane, nn, hh);
    } else {
      p.by_width.divmod(t, rest, ww);
      p.by_height.divmod(rest, plane, hh);
      p.by_channels.divmod(plane, nn, cc);
    }
    n = nn;
    c = cc;
    h = hh;
    w = ww;
  } else if (kChannelFastest) {
    c = t % channels;
    t /= channels;
    w = t % width;
    t /= width;
    h = t % height;
    n = t / height;
  } else {
    w = t % width;
    t /= width;
    h = t % height;
    t /= height;
    c = t % channels;
    n = t / channels;
  }
}

// The dividers of fmp_split for a grid of (N, C, height, width).
inline void fmp_set_dividers(FmpParams& p, int64_t height, int64_t width) {
  p.by_channels = FastDivider(p.channels);
  p.by_height = FastDivider(height);
  p.by_width = FastDivider(width);
}

// Thread `thread` of block `block` in a grid of `blocks` blocks: its grid-stride loop over the `total` outputs.
// `state`: the resolved RNG state (used when the call draws its samples).
template <typename scalar_t, typename index_t, bool kChannelFastest>
CIFAROPS_INLINE void fmp_forward_thread(const FmpParams& p, PhiloxState state, index_t total, index_t block,
                                        index_t thread, index_t blocks) {
  using acc_t = typename OpMath<scalar_t>::type;
  const index_t channels = static_cast<index_t>(p.channels), height = static_cast<index_t>(p.rows.out),
                width = static_cast<index_t>(p.cols.out);
  const index_t step = blocks * kElementwiseThreads;
  for (index_t t = block * kElementwiseThreads + thread; t < total; t += step) {
    int64_t n, c, oh, ow;
    fmp_split<index_t, kChannelFastest>(p, t, channels, height, width, n, c, oh, ow);
    fmp_forward_element<scalar_t, acc_t>(p, state, n, c, oh, ow);
  }
}

// The same over the `total` inputs: each gathers its gradient.
template <typename scalar_t, typename index_t, bool kChannelFastest>
CIFAROPS_INLINE void fmp_backward_thread(const FmpParams& p, PhiloxState state, index_t total, index_t block,
                                         index_t thread, index_t blocks) {
  using acc_t = typename OpMath<scalar_t>::type;
  const index_t channels = static_cast<index_t>(p.channels), height = static_cast<index_t>(p.rows.in),
                width = static_cast<index_t>(p.cols.in);
  const index_t step = blocks * kElementwiseThreads;
  for (index_t t = block * kElementwiseThreads + thread; t < total; t += step) {
    int64_t n, c, h, w;
    fmp_split<index_t, kChannelFastest>(p, t, channels, height, width, n, c, h, w);
    fmp_backward_element<scalar_t, acc_t>(p, state, n, c, h, w);
  }
}

// Random sequences: one thread per (draw plane, axis) writes a_0 .. a_out of its row of the (N, C', 2, length)
// table, in a grid of fmp_table_blocks(p) blocks.
CIFAROPS_INLINE int64_t fmp_table_lanes(const FmpParams& p) { return p.batch * p.draw_channels * 2; }
inline unsigned fmp_table_blocks(const FmpParams& p) { return elementwise_blocks(fmp_table_lanes(p)); }

CIFAROPS_INLINE void fmp_table_thread(const FmpParams& p, PhiloxState state, int64_t* table, int64_t length,
                                      int64_t block, int64_t thread, int64_t blocks) {
  const int64_t lanes = fmp_table_lanes(p);
  const int64_t step = blocks * kElementwiseThreads;
  for (int64_t t = block * kElementwiseThreads + thread; t < lanes; t += step) {
    const int axis = static_cast<int>(t & 1);
    const FmpAxis& a = axis == 0 ? p.cols : p.rows;
    fmp_random_sequence(state, t >> 1, axis, a.in, a.out, length - 1, length, table + t * length, 1);
  }
}

}  // namespace cifarops
