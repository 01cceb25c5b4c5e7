// Fractional max-pooling on the CPU: planes in parallel. Each plane's row and column regions are computed
// once into small tables (math in fractional_max_pool2d.h); 2 x 2 and 3 x 3 windows over NCHW planes take a
// two-pass branch-free path, every other case scans each region. Interval arithmetic runs in the storage
// type, as ATen's CPU kernel does, so half and bfloat16 windows match it.
//
// Backward scatters within one plane, serially, in row-major output order: deterministic without atomics,
// and the additions happen in the order of ATen's CPU loop (and of the GPU kernels' gather).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <cstring>
#include <type_traits>
#include <vector>

#include "args/fractional_max_pool2d.h"
#include "args/rng.h"
#include "cifarops/fractional_max_pool2d.h"

namespace cifarops {
namespace {

// Region tables of one plane (output i of an axis pools [begin[i], end[i])) and scratch for the window path,
// reused across the planes of one parallel chunk. Stored inline up to CIFAR sizes (a 32 x 32 plane): a tiny
// call then makes no heap allocation for them.
struct PlaneRegions {
  c10::SmallVector<int64_t, 32> row_begin, row_end, col_begin, col_end;
  // forward_window_plane's row folds: the best value (in the compute type) and its column offset.
  c10::SmallVector<float, 1024> run_best_float;
  c10::SmallVector<double, 256> run_best_double;
  c10::SmallVector<int32_t, 1024> run_offset;

  template <typename acc_t>
  acc_t* run_best(int64_t size) {
    if constexpr (std::is_same_v<acc_t, double>) {
      run_best_double.resize(size);
      return run_best_double.data();
    } else {
      run_best_float.resize(size);
      return run_best_float.data();
    }
  }

  FmpQuadCache quads;  // the Philox quad of the last plane's draws: neighbouring planes share one

  template <typename scalar_t>
  void fill(const FmpParams& p, PhiloxState state, int64_t n, int64_t c) {
    using acc_t = typename OpMath<scalar_t>::type;
    const auto [rows, cols] = fmp_plane_sequences<scalar_t, scalar_t, acc_t>(p, n, c, state, &quads);
    row_begin.resize(p.rows.out);
    row_end.resize(p.rows.out);
    col_begin.resize(p.cols.out);
    col_end.resize(p.cols.out);
    if (p.regions == FmpRegions::Window) {  // the common case, vectorised
      fmp_window_starts<scalar_t>(static_cast<scalar_t>(rows.u), p.rows, row_begin.data());
      fmp_window_starts<scalar_t>(static_cast<scalar_t>(cols.u), p.cols, col_begin.data());
      for (int64_t i = 0; i < p.rows.out; ++i) row_end[i] = row_begin[i] + p.rows.kernel;
      for (int64_t i = 0; i < p.cols.out; ++i) col_end[i] = col_begin[i] + p.cols.kernel;
      return;
    }
    for (int64_t i = 0; i < p.rows.out; ++i) rows.region(i, row_begin[i], row_end[i]);
    for (int64_t i = 0; i < p.cols.out; ++i) cols.region(i, col_begin[i], col_end[i]);
  }
};

template <typename Body>
void for_each_plane(const FmpParams& p, int64_t work_per_plane, Body body) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, work_per_plane));
  at::parallel_for(0, p.planes(), grain, [&](int64_t begin, int64_t end) {
    PlaneRegions regions;  // reused across the chunk's planes
    for (int64_t plane = begin; plane < end; ++plane) body(plane / p.channels, plane % p.channels, regions);
  });
}

// Planes stored with unit column stride (NCHW): the fast paths below index rows directly.
bool unit_columns(const FmpParams& p) { return p.in_strides.w == 1; }

// take ? a : b through the values' bits: compilers turn a float ?: under a NaN test into a branch, which
// random data mispredicts half the time (measured: most of the forward's time); integer masks never branch.
template <typename T>
inline T select_bits(bool take, T a, T b) {
  using bits_t = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  bits_t x, y;
  std::memcpy(&x, &a, sizeof(T));
  std::memcpy(&y, &b, sizeof(T));
  const bits_t mask = bits_t(0) - static_cast<bits_t>(take);
  x = (x & mask) | (y & ~mask);
  T out;
  std::memcpy(&out, &x, sizeof(T));
  return out;
}

// PyTorch's K x K windows over a unit-stride plane, K known at compile time, in two passes. First every
// input row is folded over each run of K columns (vectorised across columns); then each output folds its K
// row results. Folding rows first and then across them with ATen's rule (`v > best || isnan(v)`, from -inf)
// gives exactly ATen's row-major scan: the first maximum, the last NaN, an all -inf window's first element.
template <typename scalar_t, int K, bool kWide>
void forward_window_plane(const FmpParams& p, const scalar_t* plane, int64_t n, int64_t c, PlaneRegions& r) {
  using acc_t = typename OpMath<scalar_t>::type;
  const int64_t row_stride = p.in_strides.h, width = p.cols.in, height = p.rows.in;
  const int64_t runs = width - K + 1, out_h = p.rows.out, out_w = p.cols.out;
  r.run_offset.resize(height * runs);
  acc_t* CIFAROPS_RESTRICT run_best = r.run_best<acc_t>(height * runs);
  int32_t* CIFAROPS_RESTRICT run_offset = r.run_offset.data();
  for (int64_t h = 0; h < height; ++h) {
    const scalar_t* CIFAROPS_RESTRICT row = plane + h * row_stride;
    acc_t* CIFAROPS_RESTRICT best = run_best + h * runs;
    int32_t* CIFAROPS_RESTRICT offset = run_offset + h * runs;
    for (int64_t w = 0; w < runs; ++w) {
      acc_t b = static_cast<acc_t>(row[w]);  // taken from -inf unless it is -inf itself: the same either way
      int32_t o = 0;
      for (int dw = 1; dw < K; ++dw) {
        const acc_t v = static_cast<acc_t>(row[w + dw]);
        const bool take = (v > b) | (v != v);
        b = select_bits(take, v, b);
        o += (dw - o) & -static_cast<int32_t>(take);
      }
      best[w] = b;
      offset[w] = o;
    }
  }
  const int64_t out_row_stride = p.out_strides.h, out_col_stride = p.out_strides.w;
  const int64_t* row_begin = r.row_begin.data();
  const int64_t* col_begin = r.col_begin.data();
  scalar_t* y = static_cast<scalar_t*>(p.output) + p.out_strides.at(n, c, 0, 0);
  int64_t* wide = static_cast<int64_t*>(p.index) + p.out_strides.at(n, c, 0, 0);
  uint8_t* offsets = static_cast<uint8_t*>(p.index) + p.out_strides.at(n, c, 0, 0);
  for (int64_t oh = 0; oh < out_h; ++oh) {
    const int64_t r0 = row_begin[oh];
    const acc_t* top_best = run_best + r0 * runs;
    const int32_t* top_offset = run_offset + r0 * runs;
    for (int64_t ow = 0; ow < out_w; ++ow) {
      const int64_t c0 = col_begin[ow];
      acc_t b = top_best[c0];
      int32_t o = top_offset[c0];
      for (int dh = 1; dh < K; ++dh) {
        const acc_t v = top_best[dh * runs + c0];
        const bool take = (v > b) | (v != v);
        b = select_bits(take, v, b);
        o += (dh * K + top_offset[dh * runs + c0] - o) & -static_cast<int32_t>(take);
      }
      const int64_t out = oh * out_row_stride + ow * out_col_stride;
      y[out] = plane[(r0 + o / K) * row_stride + c0 + o % K];
      if (kWide) {
        wide[out] = (r0 + o / K) * width + c0 + o % K;
      } else {
        offsets[out] = static_cast<uint8_t>(o);
      }
    }
  }
}

template <typename scalar_t>
void forward_plane(const FmpParams& p, const scalar_t* plane, int64_t n, int64_t c, const PlaneRegions& r) {
  scalar_t* y = static_cast<scalar_t*>(p.output);
  for (int64_t oh = 0; oh < p.rows.out; ++oh) {
    for (int64_t ow = 0; ow < p.cols.out; ++ow) {
      int64_t h, w;
      const int64_t out = p.out_strides.at(n, c, oh, ow);
      y[out] = fmp_region_max(plane, p.in_strides.h, p.in_strides.w, r.row_begin[oh], r.row_end[oh], r.col_begin[ow],
                              r.col_end[ow], h, w);
      fmp_store_choice(p, out, h, w, r.row_begin[oh], r.col_begin[ow]);
    }
  }
}

template <typename scalar_t>
void forward(const FmpParams& p, PhiloxState state) {
  const bool window = p.regions == FmpRegions::Window && unit_columns(p) && p.rows.kernel == p.cols.kernel;
  const int64_t k = window ? p.rows.kernel : 0;
  for_each_plane(p, p.rows.in * p.cols.in, [&](int64_t n, int64_t c, PlaneRegions& r) {
    r.fill<scalar_t>(p, state, n, c);
    const scalar_t* plane = static_cast<const scalar_t*>(p.input) + p.in_strides.at(n, c, 0, 0);
    if (k == 2) {
      return p.wide_index ? forward_window_plane<scalar_t, 2, true>(p, plane, n, c, r)
                          : forward_window_plane<scalar_t, 2, false>(p, plane, n, c, r);
    }
    if (k == 3) {
      return p.wide_index ? forward_window_plane<scalar_t, 3, true>(p, plane, n, c, r)
                          : forward_window_plane<scalar_t, 3, false>(p, plane, n, c, r);
    }
    forward_plane(p, plane, n, c, r);
  });
}

// Adds grad_y of every output to the input it chose, inside its region. kSpan: the region width the byte
// offsets were written with, at compile time (0: read it from the params, or int64 flat indices).
template <typename scalar_t, int kSpan>
void scatter_plane(const FmpParams& p, scalar_t* plane, int64_t n, int64_t c, const PlaneRegions& r) {
  using acc_t = typename OpMath<scalar_t>::type;
  const int64_t out_h = p.rows.out, out_w = p.cols.out, width = p.cols.in;
  const int64_t out_row_stride = p.out_strides.h, out_col_stride = p.out_strides.w;
  const int64_t in_row_stride = p.in_strides.h, in_col_stride = p.in_strides.w;
  const int64_t base = p.out_strides.at(n, c, 0, 0);
  const scalar_t* grad_y = static_cast<const scalar_t*>(p.grad_output) + base;
  const uint8_t* offsets = static_cast<const uint8_t*>(p.index) + base;
  const int64_t *row_begin = r.row_begin.data(), *row_end = r.row_end.data();
  const int64_t *col_begin = r.col_begin.data(), *col_end = r.col_end.data();
  for (int64_t oh = 0; oh < out_h; ++oh) {
    const int64_t r0 = row_begin[oh], r1 = row_end[oh];
    for (int64_t ow = 0; ow < out_w; ++ow) {
      const int64_t out = oh * out_row_stride + ow * out_col_stride;
      const int64_t c0 = col_begin[ow], c1 = col_end[ow];
      int64_t h, w;
      if (kSpan > 0) {
        h = r0 + offsets[out] / kSpan;
        w = c0 + offsets[out] % kSpan;
        if (h >= r1 || w >= c1) continue;
      } else {
        const int64_t chosen = fmp_chosen(p, base + out, r0, c0);
        if (!fmp_inside(p, chosen, r0, r1, c0, c1)) continue;
        h = chosen / width;
        w = chosen % width;
      }
      scalar_t& g = plane[h * in_row_stride + w * in_col_stride];
      g = static_cast<scalar_t>(static_cast<acc_t>(g) + static_cast<acc_t>(grad_y[out]));
    }
  }
}

// scatter_plane for PyTorch's K x K windows (kSpan = K on both axes): every window lies inside the plane, so
// only an offset beyond the window (a hand-made index) is skipped; no region ends are read.
template <typename scalar_t, int K>
void scatter_window_plane(const FmpParams& p, scalar_t* plane, int64_t n, int64_t c, const PlaneRegions& r) {
  using acc_t = typename OpMath<scalar_t>::type;
  const int64_t out_h = p.rows.out, out_w = p.cols.out;
  const int64_t out_row_stride = p.out_strides.h, out_col_stride = p.out_strides.w;
  const int64_t in_row_stride = p.in_strides.h, in_col_stride = p.in_strides.w;
  const int64_t base = p.out_strides.at(n, c, 0, 0);
  const scalar_t* grad_y = static_cast<const scalar_t*>(p.grad_output) + base;
  const uint8_t* offsets = static_cast<const uint8_t*>(p.index) + base;
  const int64_t* row_begin = r.row_begin.data();
  const int64_t* col_begin = r.col_begin.data();
  for (int64_t oh = 0; oh < out_h; ++oh) {
    scalar_t* top = plane + row_begin[oh] * in_row_stride;
    for (int64_t ow = 0; ow < out_w; ++ow) {
      const int64_t out = oh * out_row_stride + ow * out_col_stride;
      const uint32_t o = offsets[out];
      if (o >= K * K) continue;
      scalar_t& g = top[(o / K) * in_row_stride + (col_begin[ow] + o % K) * in_col_stride];
      g = static_cast<scalar_t>(static_cast<acc_t>(g) + static_cast<acc_t>(grad_y[out]));
    }
  }
}

template <typename scalar_t>
void backward(const FmpParams& p, PhiloxState state) {
  const int64_t span = p.wide_index ? 0 : p.cols.span;
  const bool window = p.regions == FmpRegions::Window && p.rows.kernel == p.cols.kernel;
  for_each_plane(p, p.rows.in * p.cols.in, [&](int64_t n, int64_t c, PlaneRegions& r) {
    r.fill<scalar_t>(p, state, n, c);
    scalar_t* plane = static_cast<scalar_t*>(p.grad_input) + p.in_strides.at(n, c, 0, 0);
    if (unit_columns(p) && p.in_strides.h == p.cols.in) {
      std::memset(static_cast<void*>(plane), 0, p.rows.in * p.cols.in * sizeof(scalar_t));  // +0 in every type
    } else {
      for (int64_t h = 0; h < p.rows.in; ++h) {
        for (int64_t w = 0; w < p.cols.in; ++w) plane[h * p.in_strides.h + w * p.in_strides.w] = scalar_t(0);
      }
    }
    if (window && span == 2) return scatter_window_plane<scalar_t, 2>(p, plane, n, c, r);
    if (window && span == 3) return scatter_window_plane<scalar_t, 3>(p, plane, n, c, r);
    if (span == 2) return scatter_plane<scalar_t, 2>(p, plane, n, c, r);
    if (span == 3) return scatter_plane<scalar_t, 3>(p, plane, n, c, r);
    scatter_plane<scalar_t, 0>(p, plane, n, c, r);
  });
}

// The call's state (checked before anything is drawn) and, for random sequences, its boundary table.
PhiloxState prepare_draws(FmpCall& call) {
  if (call.draw == FmpDraw::None) return PhiloxState{};
  const PhiloxState state =
      cpu_state(call.explicit_state ? std::optional<at::Tensor>(*call.explicit_state) : std::nullopt, true);
  if (call.draw == FmpDraw::Sequences) call.keep_alive.push_back(fmp_cpu_random_boundaries(call.params, state));
  return state;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fractional_max_pool2d_cpu(
    const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef output_size, c10::string_view regions,
    const std::optional<at::Tensor>& samples, const std::optional<at::Tensor>& boundaries, bool return_indices,
    c10::string_view sequence, bool per_image, const std::optional<at::Tensor>& rng_state) {
  FmpCall call = fmp_forward_call(x, kernel_size, output_size, regions, samples, boundaries, return_indices, sequence,
                                  per_image, rng_state);
  const PhiloxState state = prepare_draws(call);
  if (call.params.output_numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fractional_max_pool2d_cpu",
                                    [&] { forward<scalar_t>(call.params, state); });
  }
  return {call.output, call.index, cpu_state_tensor(x, state)};
}

at::Tensor fractional_max_pool2d_backward_cpu(const at::Tensor& grad_y, const at::Tensor& index,
                                              at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                              c10::string_view regions, const std::optional<at::Tensor>& samples,
                                              const std::optional<at::Tensor>& boundaries, c10::string_view sequence,
                                              bool per_image, const std::optional<at::Tensor>& rng_state) {
  FmpCall call = fmp_backward_call(grad_y, index, input_size, kernel_size, regions, samples, boundaries, sequence,
                                   per_image, rng_state);
  const PhiloxState state = prepare_draws(call);
  if (call.params.input_numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_y.scalar_type(),
                                    "fractional_max_pool2d_backward_cpu", [&] { backward<scalar_t>(call.params, state); });
  }
  return call.grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CPU, m) {
  m.impl("fractional_max_pool2d", &fractional_max_pool2d_cpu);
  m.impl("_fractional_max_pool2d_backward", &fractional_max_pool2d_backward_cpu);
}

}  // namespace cifarops
