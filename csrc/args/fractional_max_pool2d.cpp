#include "args/fractional_max_pool2d.h"

#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/SmallVector.h>

#include <torch/library.h>

#include <array>
#include <cmath>

#include "args/autograd.h"
#include "args/common.h"
#include "args/rng.h"
#include "args/signatures.h"

namespace cifarops {
namespace {

constexpr const char* kForward = "cifarops.fractional_max_pool2d";
constexpr const char* kBackward = "cifarops._fractional_max_pool2d_backward";

FmpRegions parse_regions(c10::string_view regions, const char* op) {
  if (regions == "window") return FmpRegions::Window;
  if (regions == "disjoint") return FmpRegions::Disjoint;
  if (regions == "overlapping") return FmpRegions::Overlapping;
  TORCH_CHECK_VALUE(false, op, ": regions must be one of ('window', 'disjoint', 'overlapping'), got '", regions, "'");
}

// true for Graham's random sequences.
bool parse_sequence(c10::string_view sequence, const char* op) {
  if (sequence == "pseudorandom") return false;
  if (sequence == "random") return true;
  TORCH_CHECK_VALUE(false, op, ": sequence must be one of ('pseudorandom', 'random'), got '", sequence, "'");
}

// The largest value below 1 of the input's dtype: a drawn u that rounds to 1 becomes it.
float sample_max(at::ScalarType type) {
  switch (type) {
    case at::kHalf: return 0.99951171875f;   // 1 - 2^-11
    case at::kBFloat16: return 0.99609375f;  // 1 - 2^-8
    default: return 0.99999994f;             // 1 - 2^-24: float32 and float64 hold every 24-bit u exactly
  }
}

void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name,
                       const char* op) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
                    ref.device());
}

// ATen's alpha = (in - k) / (out - 1), rounded as the interval arithmetic of `x`'s device rounds it: the
// storage type on the CPU (half types round), the compute type on CUDA.
double window_alpha(int64_t in, int64_t k, int64_t out, const at::Tensor& x) {
  if (out <= 1) return 0.0;  // the only output sits at in - k
  const auto numerator = static_cast<float>(in - k), denominator = static_cast<float>(out - 1);
  switch (x.is_cuda() ? (x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat) : x.scalar_type()) {
    case at::kDouble: return static_cast<double>(in - k) / static_cast<double>(out - 1);
    case at::kHalf: return static_cast<float>(c10::Half(numerator) / c10::Half(denominator));
    case at::kBFloat16: return static_cast<float>(c10::BFloat16(numerator) / c10::BFloat16(denominator));
    default: return numerator / denominator;
  }
}

// The checks of every explicit draw's value need the values on the host: done here for CPU tensors. On CUDA the
// kernels check the draws each thread uses (FmpParams::check_draws: a device-side assert, no host sync), and
// clamp every region to the plane whatever the draws.
void check_sample_values(const at::Tensor& samples, const char* op) {
  if (!samples.is_cpu() || samples.numel() == 0) return;
  // One pass over the (N, C, 2) draws at their strides: no temporary tensors on every call.
  bool ok = true;
  double low = INFINITY, high = -INFINITY;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, samples.scalar_type(), "check_sample_values", [&] {
    const scalar_t* data = samples.data_ptr<scalar_t>();
    for (int64_t n = 0; n < samples.size(0); ++n) {
      for (int64_t c = 0; c < samples.size(1); ++c) {
        for (int64_t a = 0; a < 2; ++a) {
          const double v = static_cast<double>(data[n * samples.stride(0) + c * samples.stride(1) + a * samples.stride(2)]);
          ok = ok && v >= 0 && v < 1;  // false for NaN too
          low = v < low ? v : low;
          high = v > high ? v : high;
        }
      }
    }
  });
  TORCH_CHECK_VALUE(ok, op, ": samples must lie in [0, 1), got values from ", low, " to ", high);
}

void check_boundary_values(const at::Tensor& boundaries, const FmpAxis& axis, int axis_index, const char* op) {
  if (!boundaries.is_cpu() || boundaries.numel() == 0) return;
  const at::Tensor a = boundaries.select(2, axis_index).narrow(2, 0, axis.out + 1);
  const at::Tensor steps = a.diff(1, 2);
  TORCH_CHECK_VALUE(a.select(2, 0).eq(0).all().item<bool>() && a.select(2, axis.out).eq(axis.in).all().item<bool>(), op,
              ": boundaries[..., ", axis_index, ", :] must start at 0 and reach the input size ", axis.in, " at index ",
              axis.out);
  TORCH_CHECK_VALUE(steps.ge(1).logical_and(steps.le(2)).all().item<bool>(), op, ": boundaries[..., ", axis_index,
              ", :] must increase in steps of 1 or 2");
}

std::array<int64_t, 2> pair(at::IntArrayRef values, const char* name, const char* op) {
  TORCH_CHECK_VALUE(values.size() == 2, op, ": ", name, " must be a pair of ints (height, width), got ", values);
  return {values[0], values[1]};
}

// Sizes, regions and draws of one call; `x_like` (named `ref_name`) gives the device and dtype the draws must
// match. Returns what the call draws itself.
FmpDraw configure(FmpParams& p, const at::Tensor& x_like, const char* ref_name, int64_t batch, int64_t channels,
                  at::IntArrayRef input_size, at::IntArrayRef output_size, at::IntArrayRef kernel_size,
                  c10::string_view regions, const std::optional<at::Tensor>& samples,
                  const std::optional<at::Tensor>& boundaries, c10::string_view sequence, bool per_image,
                  KeepAlive& keep_alive, const char* op) {
  p.regions = parse_regions(regions, op);
  const bool random = parse_sequence(sequence, op);
  p.batch = batch;
  p.channels = channels;
  const auto in = pair(input_size, "input size", op), out = pair(output_size, "output_size", op);
  FmpAxis* axes[2] = {&p.rows, &p.cols};
  const char* names[2] = {"height", "width"};
  const bool window = p.regions == FmpRegions::Window;
  TORCH_CHECK_VALUE(!(window && random), op, ": sequence='random' is for Graham's 'disjoint' and 'overlapping' regions");
  std::array<int64_t, 2> k = {0, 0};
  if (window) {
    k = pair(kernel_size, "kernel_size", op);
  } else {
    TORCH_CHECK_VALUE(kernel_size.empty(), op, ": kernel_size is for regions='window'; Graham's '", regions,
                      "' regions take none, got ", kernel_size);
  }
  for (int d = 0; d < 2; ++d) {
    FmpAxis& a = *axes[d];
    a.in = in[d];
    a.out = out[d];
    TORCH_CHECK_VALUE(a.out >= 1, op, ": output_size must be positive, got ", a.out, " for the ", names[d]);
    TORCH_CHECK_VALUE(a.out < a.in, op, ": the output ", names[d], " ", a.out, " must be smaller than the input ",
                      names[d], " ", a.in);
    if (window) {
      a.kernel = k[d];
      TORCH_CHECK_VALUE(a.kernel >= 1, op, ": kernel_size must be positive, got ", a.kernel, " for the ", names[d]);
      TORCH_CHECK_VALUE(a.kernel + a.out - 1 <= a.in, op, ": kernel_size ", a.kernel, " is too large for output ",
                        names[d], " ", a.out, " from input ", names[d], " ", a.in,
                        " (needs kernel_size + output - 1 <= input)");
      a.span = a.kernel;
      a.alpha = window_alpha(a.in, a.kernel, a.out, x_like);
    } else {
      TORCH_CHECK_VALUE(a.in <= 2 * a.out, op, ": Graham's regions take 1 or 2 rows each, so the input ", names[d],
                        " ", a.in, " can be at most twice the output ", names[d], " ", a.out);
      a.span = p.regions == FmpRegions::Disjoint ? 2 : 3;  // no alpha: fmp_pseudorandom_boundary is integer math
      a.inv_out = 1.0 / static_cast<double>(a.out);
    }
  }
  TORCH_CHECK_VALUE(!(samples.has_value() && boundaries.has_value()), op,
                    ": pass at most one of samples and boundaries, not both");
  TORCH_CHECK_VALUE(!(window && boundaries.has_value()), op, ": regions='window' takes samples, not boundaries");
  p.draw = false;
  p.draw_channels = per_image ? 1 : channels;
  p.sample_max = sample_max(x_like.scalar_type());
  if (samples.has_value()) {
    const at::Tensor& s = *samples;
    TORCH_CHECK_VALUE(!random, op, ": samples draw pseudorandom sequences; pass boundaries for explicit ones");
    check_same_device(s, x_like, "samples", ref_name, op);
    TORCH_CHECK_TYPE(s.scalar_type() == x_like.scalar_type(), op, ": samples must have the input's dtype ",
                     x_like.scalar_type(), ", got ", s.scalar_type());
    TORCH_CHECK_VALUE(s.dim() == 3 && s.size(0) == batch && s.size(1) == channels && s.size(2) == 2, op,
                      ": samples must have shape (N, C, 2) = (", batch, ", ", channels, ", 2), got ", s.sizes());
    check_sample_values(s, op);
    p.check_draws = !s.is_cpu();  // the values are read on the host only for CPU tensors
    keep_alive.push_back(s);
    p.samples = s.data_ptr();
    p.sample_stride_n = s.stride(0);
    p.sample_stride_c = s.stride(1);
    p.sample_stride_axis = s.stride(2);
    return FmpDraw::None;
  }
  if (boundaries.has_value()) {
    const at::Tensor& b = *boundaries;
    check_same_device(b, x_like, "boundaries", ref_name, op);
    TORCH_CHECK_TYPE(b.scalar_type() == at::kLong, op, ": boundaries must be int64, got ", b.scalar_type());
    const int64_t length = std::max(p.rows.out, p.cols.out) + 1;
    TORCH_CHECK_VALUE(b.dim() == 4 && b.size(0) == batch && b.size(1) == channels && b.size(2) == 2 &&
                          b.size(3) >= length,
                      op, ": boundaries must have shape (N, C, 2, L) = (", batch, ", ", channels, ", 2, >= ", length,
                      "), got ", b.sizes());
    check_boundary_values(b, p.cols, 0, op);
    check_boundary_values(b, p.rows, 1, op);
    p.check_draws = !b.is_cpu();
    keep_alive.push_back(b);
    p.boundaries = b.data_ptr<int64_t>();
    p.boundary_stride_n = b.stride(0);
    p.boundary_stride_c = b.stride(1);
    p.boundary_stride_axis = b.stride(2);
    p.boundary_stride_i = b.stride(3);
    return FmpDraw::None;
  }
  if (random) return FmpDraw::Sequences;
  p.draw = true;
  return FmpDraw::Samples;
}

// The rng_state argument of a call that draws: checked, and recorded (explicit, else None: the generator's).
void take_state(FmpCall& call, const std::optional<at::Tensor>& rng_state, const at::Tensor& ref, const char* op) {
  if (rng_state.has_value()) check_rng_state(*rng_state, ref, "rng_state", op);
  if (call.draw != FmpDraw::None && rng_state.has_value()) call.explicit_state = &*rng_state;
}

Strides4 strides4(const at::Tensor& t) { return Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

void check_input(const at::Tensor& t, const char* name, const char* op) {
  const auto type = t.scalar_type();
  TORCH_CHECK_TYPE(type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16, op, ": ",
                   name, " must be float32, float64, float16 or bfloat16, got ", type);
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": ", name, " must be 4-dimensional (N, C, H, W), got shape ", t.sizes());
}

void use_boundary_table(FmpParams& p, const at::Tensor& table) {
  p.boundaries = table.data_ptr<int64_t>();
  p.boundary_stride_n = table.stride(0);
  p.boundary_stride_c = table.size(1) == 1 ? 0 : table.stride(1);
  p.boundary_stride_axis = table.stride(2);
  p.boundary_stride_i = table.stride(3);
}

}  // namespace

at::Tensor fmp_sequence_table(const at::Tensor& like, FmpParams& p) {
  const int64_t length = std::max(p.rows.out, p.cols.out) + 1;
  at::Tensor table = at::empty({p.batch, p.draw_channels, 2, length}, like.options().dtype(at::kLong));
  use_boundary_table(p, table);
  return table;
}

at::Tensor fmp_cpu_random_boundaries(FmpParams& p, PhiloxState state) {
  at::Tensor table = fmp_sequence_table(at::empty({0}, at::kLong), p);
  int64_t* data = table.data_ptr<int64_t>();
  const int64_t length = table.size(3), max_out = length - 1;
  for (int64_t plane = 0; plane < p.batch * p.draw_channels; ++plane) {
    fmp_random_sequence(state, plane, 0, p.cols.in, p.cols.out, max_out, length, data + (plane * 2) * length, 1);
    fmp_random_sequence(state, plane, 1, p.rows.in, p.rows.out, max_out, length, data + (plane * 2 + 1) * length, 1);
  }
  return table;
}

FmpCall fmp_forward_call(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef output_size,
                         c10::string_view regions, const std::optional<at::Tensor>& samples,
                         const std::optional<at::Tensor>& boundaries, bool return_indices, c10::string_view sequence,
                         bool per_image, const std::optional<at::Tensor>& rng_state) {
  check_input(x, "x", kForward);
  FmpCall call;
  FmpParams& p = call.params;
  call.draw = configure(p, x, "x", x.size(0), x.size(1), {x.size(2), x.size(3)}, output_size, kernel_size, regions,
                        samples, boundaries, sequence, per_image, call.keep_alive, kForward);
  take_state(call, rng_state, x, kForward);
  p.wide_index = return_indices || p.rows.span * p.cols.span > 256;
  const at::MemoryFormat format = dense_format(x);
  const at::Tensor dense = x.contiguous(format);
  call.keep_alive.push_back(dense);
  const std::array<int64_t, 4> sizes = {x.size(0), x.size(1), p.rows.out, p.cols.out};
  call.output = empty_output(sizes, x.options(), format);
  call.index = empty_output(sizes, x.options().dtype(p.wide_index ? at::kLong : at::kByte), format);
  p.input = dense.data_ptr();
  p.output = call.output.data_ptr();
  p.index = call.index.data_ptr();
  p.in_strides = strides4(dense);
  p.out_strides = strides4(call.output);
  fmp_set_dividers(p, p.rows.out, p.cols.out);  // one thread per output
  return call;
}

FmpCall fmp_backward_call(const at::Tensor& grad_y, const at::Tensor& index, at::IntArrayRef input_size,
                          at::IntArrayRef kernel_size, c10::string_view regions,
                          const std::optional<at::Tensor>& samples, const std::optional<at::Tensor>& boundaries,
                          c10::string_view sequence, bool per_image, const std::optional<at::Tensor>& rng_state) {
  check_input(grad_y, "grad_y", kBackward);
  TORCH_CHECK_TYPE(index.scalar_type() == at::kLong || index.scalar_type() == at::kByte, kBackward,
                   ": index must be int64 or uint8, got ", index.scalar_type());
  TORCH_CHECK_VALUE(index.sizes() == grad_y.sizes(), kBackward, ": index must have grad_y's shape ", grad_y.sizes(),
                    ", got ", index.sizes());
  check_same_device(index, grad_y, "index", "grad_y", kBackward);
  FmpCall call;
  FmpParams& p = call.params;
  call.draw = configure(p, grad_y, "grad_y", grad_y.size(0), grad_y.size(1), input_size, {grad_y.size(2), grad_y.size(3)},
                        kernel_size, regions, samples, boundaries, sequence, per_image, call.keep_alive, kBackward);
  TORCH_CHECK_VALUE(call.draw == FmpDraw::None || rng_state.has_value(), kBackward,
                    ": rng_state (the forward's) is required when neither samples nor boundaries are given");
  take_state(call, rng_state, grad_y, kBackward);
  p.wide_index = index.scalar_type() == at::kLong;
  TORCH_CHECK_VALUE(p.wide_index || p.rows.span * p.cols.span <= 256, kBackward,
                    ": uint8 index needs regions of at most 256 elements");
  // grad_y and index are read at the same strides: one dense layout for both (index's, as forward made it);
  // with equal shapes and layout their strides can differ only along size-1 dims, which are never stepped.
  const at::MemoryFormat format = dense_format(index);
  const at::Tensor dense_grad = grad_y.contiguous(format), dense_index = index.contiguous(format);
  call.keep_alive.push_back(dense_grad);
  call.keep_alive.push_back(dense_index);
  call.grad_input = empty_output({grad_y.size(0), grad_y.size(1), p.rows.in, p.cols.in}, grad_y.options(), format);
  p.grad_output = dense_grad.data_ptr();
  p.index = dense_index.data_ptr();
  p.grad_input = call.grad_input.data_ptr();
  p.in_strides = strides4(call.grad_input);
  p.out_strides = strides4(dense_grad);
  fmp_set_dividers(p, p.rows.in, p.cols.in);  // one thread per input
  return call;
}

// ------------------------------------------------------------------------------------------ autograd
//
// One node per op: the forward runs the op below autograd through the dispatcher and, when a graph is recorded,
// saves the choices and the draws (the explicit ones, or the 16-byte RNG state it drew from); the backward
// calls the backward op through the dispatcher. The index and the state carry no gradient (no history, so
// autograd makes no zeros() for them).
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

enum class Regions : int { Window = 0, Disjoint = 1, Overlapping = 2 };
constexpr const char* kRegionNames[3] = {"window", "disjoint", "overlapping"};

// What both nodes save: the choices, the draws a backward needs (the explicit samples or boundaries, else the
// state drawn from) and the arguments as plain values (no strings copied per call). Tensors as saved variables,
// as torch's own nodes keep them: saved-tensor hooks (checkpointing, offloading) see them, and an in-place
// change after the forward is an error. The index and the state carry no gradient: no reference cycle.
struct SavedRegions {
  SavedVariable index, samples, boundaries, state;
  c10::SmallVector<int64_t, 2> kernel_size;  // [] or [kh, kw]: inline, no allocation per call
  Regions regions = Regions::Window;
  bool random = false, per_image = false;

  void save(const at::Tensor& index_, const OptTensor& samples_, const OptTensor& boundaries_, const at::Tensor& state_,
            at::IntArrayRef kernel, c10::string_view regions_, c10::string_view sequence, bool per_image_) {
    index = SavedVariable(index_, false);
    if (samples_.has_value()) samples = SavedVariable(*samples_, false);
    if (boundaries_.has_value()) boundaries = SavedVariable(*boundaries_, false);
    if (!samples_.has_value() && !boundaries_.has_value() && state_.defined()) state = SavedVariable(state_, false);
    kernel_size.assign(kernel.begin(), kernel.end());
    regions = regions_ == "window" ? Regions::Window : regions_ == "disjoint" ? Regions::Disjoint : Regions::Overlapping;
    random = sequence == "random";
    per_image = per_image_;
  }
  void release() {
    index.reset_data();
    samples.reset_data();
    boundaries.reset_data();
    state.reset_data();
  }
  c10::string_view regions_name() const { return kRegionNames[static_cast<int>(regions)]; }
  c10::string_view sequence() const { return random ? "random" : "pseudorandom"; }
};

// The backward op is linear in grad_y: its gradient reads grad_grad_x at each output's choice.
struct FmpBackwardBackward final : torch::autograd::Node {
  SavedRegions saved;

  std::string name() const override { return "FractionalMaxPool2dBackwardBackward"; }
  void release_variables() override { saved.release(); }

  variable_list apply(variable_list&& grads) override {
    variable_list out(1);
    if (!grads[0].defined() || !task_should_compute_output(0)) return out;
    out[0] = fmp_select_op().call(grads[0], saved.index.unpack(), saved.kernel_size, saved.regions_name(),
                                  unpack_optional(saved.samples), unpack_optional(saved.boundaries), saved.sequence(),
                                  saved.per_image, unpack_optional(saved.state));
    return out;
  }
};

struct FmpBackward final : torch::autograd::Node {
  SavedRegions saved;
  c10::SymInt height, width;  // SymInts: under torch.compile with a dynamic batch, sizes are symbolic

  std::string name() const override { return "FractionalMaxPool2dBackward"; }
  void release_variables() override { saved.release(); }

  variable_list apply(variable_list&& grads) override {
    variable_list out(1);
    if (!grads[0].defined() || !task_should_compute_output(0)) return out;
    const c10::SymInt input_size[2] = {height, width};
    // Unpacked before the guard: an unpack hook (a checkpoint's recomputation) records a graph of its own.
    const at::Tensor index = saved.index.unpack();
    const OptTensor samples = unpack_optional(saved.samples), boundaries = unpack_optional(saved.boundaries);
    const OptTensor state = unpack_optional(saved.state);
    BackwardGuard guard;
    out[0] = fmp_backward_op().call(grads[0], index, input_size, saved.kernel_size, saved.regions_name(), samples,
                                    boundaries, saved.sequence(), saved.per_image, state);
    return out;
  }
};

Tensor3 fractional_max_pool2d_autograd(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef output_size,
                                       c10::string_view regions, const OptTensor& samples,
                                       const OptTensor& boundaries, bool return_indices, c10::string_view sequence,
                                       bool per_image, const OptTensor& rng_state) {
  const bool records = records_grad(kForward, x);
  auto [y, index, state] = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return fmp_op().call(x, kernel_size, output_size, regions, samples, boundaries, return_indices, sequence,
                         per_image, rng_state);
  }();
  if (records) {
    auto node = make_node<FmpBackward>(x);
    node->saved.save(index, samples, boundaries, state, kernel_size, regions, sequence, per_image);
    node->height = x.sym_size(2);
    node->width = x.sym_size(3);
    set_history(node, y);
  }
  return {std::move(y), std::move(index), std::move(state)};
}

at::Tensor fractional_max_pool2d_backward_autograd(const at::Tensor& grad_y, const at::Tensor& index,
                                                   c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                                                   c10::string_view regions, const OptTensor& samples,
                                                   const OptTensor& boundaries, c10::string_view sequence,
                                                   bool per_image, const OptTensor& rng_state) {
  const bool records = records_grad("cifarops._fractional_max_pool2d_backward", grad_y);
  at::Tensor grad_x = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return fmp_backward_op().call(grad_y, index, input_size, kernel_size, regions, samples, boundaries, sequence,
                                  per_image, rng_state);
  }();
  if (records) {
    auto node = make_node<FmpBackwardBackward>(grad_y);
    node->saved.save(index, samples, boundaries, rng_state.value_or(at::Tensor()), kernel_size, regions, sequence,
                     per_image);
    set_history(node, grad_x);
  }
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, Autograd, m) {
  m.impl("fractional_max_pool2d", &fractional_max_pool2d_autograd);
  m.impl("_fractional_max_pool2d_backward", &fractional_max_pool2d_backward_autograd);
}

}  // namespace cifarops
