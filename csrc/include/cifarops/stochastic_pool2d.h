// Stochastic pooling's shared math (SPEC.md; Zeiler & Fergus, arXiv 1301.3557): in region R of k_h x k_w (stride,
// padding and ceil mode as torch's max_pool2d) the activations a = max(x, 0) give p_i = a_i / S, S = sum_R a.
//   training    the first positive a_i whose running sum exceeds u * S (or reaches +inf), else the last positive
//               one (u * S may round up to S); a region with a NaN draws its first NaN; S = 0 draws nothing
//               (output 0, no gradient). u = u(NCHW output index, stream 0), or the explicit uniforms.
//               Saved: the drawn offset inside the window, (r - h_start) * k_w + (c - w_start), one byte.
//   evaluation  f = sum a^2 / S (0 where S = 0, +inf where S is infinite), df/dx_i = (2 a_i - f) / S for x_i > 0.
// Every sum runs in the window's row-major order with one rounding per operation (rounding.h), on every backend and
// in the reference (python/cifarops/reference/stochastic_pool2d.py): the same running sums, so the same draws.
// The backward gathers: each input element walks the windows that contain it, in (oh, ow) order (no atomics).
//
// Torch-free on purpose: the CPU loops (csrc/cpu/stochastic_pool2d.cpp) and the CUDA kernels
// (csrc/cuda/stochastic_pool2d.cu) include this header, and cpp_tests/kernel_grid_stochastic_pool2d.cpp runs the
// kernels' whole grids on the host.
#pragma once

#include <stdint.h>

#include "cifarops/cuda_elementwise.cuh"
#include "cifarops/macros.h"
#include "cifarops/philox.h"
#include "cifarops/rounding.h"
#include "cifarops/tensor_types.h"

namespace cifarops {

constexpr uint32_t kStochasticPoolStreams = 1;  // stream 0: one uniform per output
constexpr uint8_t kStochasticPoolNone = 255;    // the offset of a region that drew nothing (k_h * k_w <= 255)

enum class StochasticPoolKind : uint8_t { Sample, Expectation, SampleBackward, ExpectationBackward };

// x (and grad_x) dense in one layout, y, the offsets, the uniforms and grad_y dense in the same layout: NCHW or
// channels_last (NHWC).
struct StochasticPoolParams {
  const void* input = nullptr;        // x: Sample, Expectation, ExpectationBackward
  const void* grad_output = nullptr;  // grad_y: the backward kinds
  const float* uniforms = nullptr;    // explicit u laid out like y (Sample), else drawn from rng
  uint8_t* offset = nullptr;          // written by Sample, read by SampleBackward
  void* output = nullptr;             // y (forward kinds) or grad_x (backward kinds)
  PhiloxState rng;                    // CPU: set on the host; CUDA: resolved in the kernel
  int64_t batch = 0, channels = 0, in_h = 0, in_w = 0, out_h = 0, out_w = 0;
  int kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  bool channels_last = false;
  StochasticPoolKind kind = StochasticPoolKind::Sample;

  CIFAROPS_INLINE int64_t outputs() const { return batch * channels * out_h * out_w; }
  CIFAROPS_INLINE int64_t inputs() const { return batch * channels * in_h * in_w; }
  CIFAROPS_INLINE bool backward() const {
    return kind == StochasticPoolKind::SampleBackward || kind == StochasticPoolKind::ExpectationBackward;
  }
  // The elements one thread (CUDA) or iteration (CPU) produces: outputs forward, inputs backward.
  CIFAROPS_INLINE int64_t items() const { return backward() ? inputs() : outputs(); }
};

// A plane (n, c) of a dense NCHW or NHWC tensor of spatial size h x w: its first element and the strides of a
// row and a column, in elements.
template <typename index_t>
struct PoolPlane {
  index_t base, row, col;
};

template <typename index_t>
CIFAROPS_INLINE PoolPlane<index_t> pool_plane(const StochasticPoolParams& p, index_t n, index_t c, index_t h,
                                              index_t w) {
  const index_t channels = static_cast<index_t>(p.channels);
  if (p.channels_last) return {n * h * w * channels + c, w * channels, channels};
  return {(n * channels + c) * h * w, w, 1};
}

// The position (n, c, h, w) of memory index m of a dense tensor of spatial size h x w in p's layout.
template <typename index_t>
struct PoolPosition {
  index_t n, c, h, w;
};

template <typename index_t>
CIFAROPS_INLINE PoolPosition<index_t> pool_position(const StochasticPoolParams& p, index_t m, index_t height,
                                                    index_t width) {
  const index_t channels = static_cast<index_t>(p.channels);
  PoolPosition<index_t> q;
  if (p.channels_last) {
    index_t t = m / channels;
    q.c = m - t * channels;
    index_t u = t / width;
    q.w = t - u * width;
    q.n = u / height;
    q.h = u - q.n * height;
  } else {
    index_t t = m / width;
    q.w = m - t * width;
    index_t u = t / height;
    q.h = t - u * height;
    q.n = u / channels;
    q.c = u - q.n * channels;
  }
  return q;
}

// Output (oh, ow)'s region: input rows [r0, r1) and columns [c0, c1), and the window's unclipped start.
template <typename index_t>
struct PoolWindow {
  index_t h_start, w_start, r0, r1, c0, c1;
};

template <typename index_t>
CIFAROPS_INLINE PoolWindow<index_t> pool_window(const StochasticPoolParams& p, index_t oh, index_t ow) {
  PoolWindow<index_t> w;
  w.h_start = oh * p.stride_h - p.pad_h;
  w.w_start = ow * p.stride_w - p.pad_w;
  const index_t h_end = w.h_start + p.kernel_h, w_end = w.w_start + p.kernel_w;
  w.r0 = w.h_start > 0 ? w.h_start : 0;
  w.c0 = w.w_start > 0 ? w.w_start : 0;
  w.r1 = h_end < static_cast<index_t>(p.in_h) ? h_end : static_cast<index_t>(p.in_h);
  w.c1 = w_end < static_cast<index_t>(p.in_w) ? w_end : static_cast<index_t>(p.in_w);
  return w;
}

// The outputs whose windows contain input row (or column) i: [first, last).
template <typename index_t>
CIFAROPS_INLINE void pool_outputs_of(index_t i, int kernel, int stride, int pad, int64_t out, index_t& first,
                                     index_t& last) {
  const index_t padded = i + pad;
  first = padded < kernel ? 0 : (padded - kernel) / stride + 1;
  const index_t end = padded / stride + 1;
  last = end < static_cast<index_t>(out) ? end : static_cast<index_t>(out);
}

template <typename acc_t>
CIFAROPS_INLINE bool pool_is_nan(acc_t v) {
  return v != v;
}

template <typename acc_t>
CIFAROPS_INLINE bool pool_is_inf(acc_t v) {
  return v - v != v - v && v == v;  // inf - inf is NaN; a finite v gives 0 == 0
}

// a = max(x, 0), NaN kept (torch's clamp_min).
template <typename acc_t>
CIFAROPS_INLINE acc_t pool_activation(acc_t v) {
  return v > acc_t(0) || pool_is_nan(v) ? v : acc_t(0);
}

template <typename acc_t>
struct PoolDraw {
  acc_t value;
  uint8_t offset;
};

// The training draw of one region with uniform u.
template <typename scalar_t, typename acc_t, typename index_t>
CIFAROPS_INLINE PoolDraw<acc_t> stochastic_pool_draw(const StochasticPoolParams& p, const scalar_t* x,
                                                     PoolPlane<index_t> plane, PoolWindow<index_t> w, float u) {
  acc_t total = 0, last_value = 0;
  int last = kStochasticPoolNone;
  for (index_t r = w.r0; r < w.r1; ++r) {
    for (index_t c = w.c0; c < w.c1; ++c) {
      const acc_t a = pool_activation(to_acc<acc_t>(x[plane.base + r * plane.row + c * plane.col]));
      const int i = static_cast<int>((r - w.h_start) * p.kernel_w + (c - w.w_start));
      if (pool_is_nan(a)) return {a, static_cast<uint8_t>(i)};  // the sum is NaN: the first NaN is drawn
      total = rn_add(total, a);
      if (a > acc_t(0)) last = i, last_value = a;
    }
  }
  const acc_t target = rn_mul(static_cast<acc_t>(u), total);
  acc_t running = 0;
  for (index_t r = w.r0; r < w.r1; ++r) {
    for (index_t c = w.c0; c < w.c1; ++c) {
      const acc_t a = pool_activation(to_acc<acc_t>(x[plane.base + r * plane.row + c * plane.col]));
      running = rn_add(running, a);
      if (a > acc_t(0) && (running > target || pool_is_inf(running))) {
        return {a, static_cast<uint8_t>((r - w.h_start) * p.kernel_w + (c - w.w_start))};
      }
    }
  }
  return {last_value, static_cast<uint8_t>(last)};
}

// Evaluation's weighting of one region: f = sum a^2 / S, and S.
template <typename scalar_t, typename acc_t, typename index_t>
CIFAROPS_INLINE acc_t stochastic_pool_expectation(const scalar_t* x, PoolPlane<index_t> plane, PoolWindow<index_t> w,
                                                  acc_t& sum) {
  acc_t s1 = 0, s2 = 0;
  for (index_t r = w.r0; r < w.r1; ++r) {
    for (index_t c = w.c0; c < w.c1; ++c) {
      const acc_t a = pool_activation(to_acc<acc_t>(x[plane.base + r * plane.row + c * plane.col]));
      s1 = rn_add(s1, a);
      s2 = rn_add(s2, rn_mul(a, a));
    }
  }
  sum = s1;
  if (s1 == acc_t(0)) return acc_t(0);
  return pool_is_inf(s1) ? s1 : s2 / s1;
}

// ------------------------------------------------------------------------ one output, one input (every backend)

// Output memory index m's uniform: the explicit one, or u(NCHW output index, stream 0). p.rng is resolved.
template <typename index_t>
CIFAROPS_INLINE float stochastic_pool_uniform(const StochasticPoolParams& p, index_t m, PoolPosition<index_t> q) {
  if (p.uniforms != nullptr) return p.uniforms[m];
  const uint64_t logical = ((static_cast<uint64_t>(q.n) * p.channels + q.c) * p.out_h + q.h) * p.out_w + q.w;
  return philox_uniform(p.rng, logical, 0);
}

// Output memory index m at position q: y (and the drawn offset, with uniform u) or evaluation's f.
template <typename scalar_t, typename index_t>
CIFAROPS_INLINE void stochastic_pool_output_at(const StochasticPoolParams& p, index_t m, PoolPosition<index_t> q,
                                               float u) {
  using acc_t = typename OpMath<scalar_t>::type;
  const auto* x = static_cast<const scalar_t*>(p.input);
  const PoolPlane<index_t> plane = pool_plane<index_t>(p, q.n, q.c, static_cast<index_t>(p.in_h),
                                                       static_cast<index_t>(p.in_w));
  const PoolWindow<index_t> w = pool_window<index_t>(p, q.h, q.w);
  auto* y = static_cast<scalar_t*>(p.output);
  if (p.kind == StochasticPoolKind::Expectation) {
    acc_t sum;
    y[m] = from_acc<scalar_t>(stochastic_pool_expectation<scalar_t, acc_t, index_t>(x, plane, w, sum));
    return;
  }
  const PoolDraw<acc_t> d = stochastic_pool_draw<scalar_t, acc_t, index_t>(p, x, plane, w, u);
  y[m] = from_acc<scalar_t>(d.value);
  p.offset[m] = d.offset;
}

// Output memory index m (a forward kind). p.rng is resolved.
template <typename scalar_t, typename index_t>
CIFAROPS_INLINE void stochastic_pool_output(const StochasticPoolParams& p, index_t m) {
  const PoolPosition<index_t> q =
      pool_position<index_t>(p, m, static_cast<index_t>(p.out_h), static_cast<index_t>(p.out_w));
  const float u = p.kind == StochasticPoolKind::Sample ? stochastic_pool_uniform<index_t>(p, m, q) : 0.0f;
  stochastic_pool_output_at<scalar_t, index_t>(p, m, q, u);
}

// Input memory index m at position q: grad_x, gathered over the windows that contain it in (oh, ow) order.
template <typename scalar_t, typename index_t>
CIFAROPS_INLINE void stochastic_pool_input_at(const StochasticPoolParams& p, index_t m, PoolPosition<index_t> q) {
  using acc_t = typename OpMath<scalar_t>::type;
  const PoolPlane<index_t> out_plane = pool_plane<index_t>(p, q.n, q.c, static_cast<index_t>(p.out_h),
                                                           static_cast<index_t>(p.out_w));
  const auto* g = static_cast<const scalar_t*>(p.grad_output);
  index_t oh0, oh1, ow0, ow1;
  pool_outputs_of<index_t>(q.h, p.kernel_h, p.stride_h, p.pad_h, p.out_h, oh0, oh1);
  pool_outputs_of<index_t>(q.w, p.kernel_w, p.stride_w, p.pad_w, p.out_w, ow0, ow1);
  acc_t grad = 0;
  if (p.kind == StochasticPoolKind::SampleBackward) {
    for (index_t oh = oh0; oh < oh1; ++oh) {
      for (index_t ow = ow0; ow < ow1; ++ow) {
        const index_t o = out_plane.base + oh * out_plane.row + ow * out_plane.col;
        const index_t i = (q.h - (oh * p.stride_h - p.pad_h)) * p.kernel_w + (q.w - (ow * p.stride_w - p.pad_w));
        if (p.offset[o] == static_cast<uint8_t>(i)) grad = rn_add(grad, to_acc<acc_t>(g[o]));
      }
    }
  } else {
    const auto* x = static_cast<const scalar_t*>(p.input);
    const PoolPlane<index_t> in_plane = pool_plane<index_t>(p, q.n, q.c, static_cast<index_t>(p.in_h),
                                                            static_cast<index_t>(p.in_w));
    const acc_t a = pool_activation(to_acc<acc_t>(x[m]));
    if (a > acc_t(0)) {  // else every window gives 0 (NaN included, as the reference's a > 0)
      for (index_t oh = oh0; oh < oh1; ++oh) {
        for (index_t ow = ow0; ow < ow1; ++ow) {
          acc_t sum;
          const acc_t f =
              stochastic_pool_expectation<scalar_t, acc_t, index_t>(x, in_plane, pool_window<index_t>(p, oh, ow), sum);
          if (sum == acc_t(0) || pool_is_inf(sum)) continue;
          const acc_t gy = to_acc<acc_t>(g[out_plane.base + oh * out_plane.row + ow * out_plane.col]);
          grad = rn_add(grad, rn_mul(gy, rn_add(acc_t(2) * a, -f)) / sum);
        }
      }
    }
  }
  static_cast<scalar_t*>(p.output)[m] = from_acc<scalar_t>(grad);
}

// Input memory index m (a backward kind).
template <typename scalar_t, typename index_t>
CIFAROPS_INLINE void stochastic_pool_input(const StochasticPoolParams& p, index_t m) {
  stochastic_pool_input_at<scalar_t, index_t>(
      p, m, pool_position<index_t>(p, m, static_cast<index_t>(p.in_h), static_cast<index_t>(p.in_w)));
}


// ------------------------------------------------------------------------ the CUDA kernels, host-runnable
//
// One thread per item (an output forward, an input backward) in a grid-stride loop; each kind is one kernel. The
// 32-bit index is signed, unlike the other kernels' unsigned one: pool_window compares a window's start with 0,
// and a window starting in the padding starts at a negative row or column. It is taken when every memory index
// (the input's and the output's: offsets, uniforms and grad_y are laid out like y, grad_x like x) and the grid-stride
// loop's last step past the items (at most one capped grid's threads) stay below 2^31.
struct StochasticPoolLaunch {
  bool launch = true;  // false: no items (the forward's state output is made without the kernel)
  bool small = false;
  unsigned blocks = 1;
};

inline StochasticPoolLaunch stochastic_pool_launch(const StochasticPoolParams& p) {
  StochasticPoolLaunch launch;
  const int64_t items = p.items();
  launch.launch = items > 0;
  launch.blocks = elementwise_blocks(items);
  const int64_t largest = p.inputs() > p.outputs() ? p.inputs() : p.outputs();
  launch.small = largest < (int64_t(1) << 31) - int64_t(kElementwiseThreads) * 65536;
  return launch;
}

// Thread `thread` of block `block` of `blocks`: the items m, m + one grid, ... of p's kind. p.rng is resolved.
template <typename scalar_t, typename index_t>
CIFAROPS_INLINE void stochastic_pool_thread(const StochasticPoolParams& p, index_t block, index_t thread,
                                            index_t blocks) {
  const index_t items = static_cast<index_t>(p.items());
  const index_t step = blocks * static_cast<index_t>(kElementwiseThreads);
  const bool backward = p.backward();
  for (index_t m = block * static_cast<index_t>(kElementwiseThreads) + thread; m < items; m += step) {
    if (backward) {
      stochastic_pool_input<scalar_t, index_t>(p, m);
    } else {
      stochastic_pool_output<scalar_t, index_t>(p, m);
    }
  }
}

// Calls launcher(index_t{}) with the instantiation's index type: the CUDA launcher launches it, the host test runs
// its grid. A value, not a template argument (launcher.template operator()<index_t>() as the other ops): the .cu
// files are compiled as C++17, where a lambda's explicit template parameters draw nvcc's warning 3288.
template <typename Launcher>
inline void stochastic_pool_dispatch(const StochasticPoolLaunch& launch, Launcher&& launcher) {
  if (launch.small) {
    launcher(int32_t{});
  } else {
    launcher(int64_t{});
  }
}

}  // namespace cifarops
