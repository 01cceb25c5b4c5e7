#include "args/fractional_max_pool2d.h"

#include <ATen/Dispatch.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>

#include "args/common.h"

namespace cifarops {
namespace {

constexpr const char* kForward = "cifarops.fractional_max_pool2d";
constexpr const char* kBackward = "cifarops._fractional_max_pool2d_backward";

FmpRegions parse_regions(const std::string& regions, const char* op) {
  if (regions == "window") return FmpRegions::Window;
  if (regions == "disjoint") return FmpRegions::Disjoint;
  if (regions == "overlapping") return FmpRegions::Overlapping;
  TORCH_CHECK(false, op, ": regions must be 'window', 'disjoint' or 'overlapping', got '", regions, "'");
}

// ATen's alpha = (in - k) / (out - 1), rounded as the interval arithmetic of `x`'s device rounds it: the
// storage type on the CPU (half types round), the compute type on CUDA.
double window_alpha(int64_t in, int64_t k, int64_t out, const at::Tensor& x) {
  if (out <= 1) return 0.0;  // the only output sits at in - k
  const auto numerator = static_cast<float>(in - k), denominator = static_cast<float>(out - 1);
  switch (x.is_cuda() ? opmath_type(x) : x.scalar_type()) {
    case at::kDouble: return static_cast<double>(in - k) / static_cast<double>(out - 1);
    case at::kHalf: return static_cast<float>(c10::Half(numerator) / c10::Half(denominator));
    case at::kBFloat16: return static_cast<float>(c10::BFloat16(numerator) / c10::BFloat16(denominator));
    default: return numerator / denominator;
  }
}

// The checks of every draw's value need the values on the host: done here for CPU tensors; on CUDA the
// functional API checks explicit draws, and the kernels clamp every region to the plane whatever the draws.
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
  TORCH_CHECK(ok, op, ": samples must lie in [0, 1), got values from ", low, " to ", high);
}

void check_boundary_values(const at::Tensor& boundaries, const FmpAxis& axis, int axis_index, const char* op) {
  if (!boundaries.is_cpu() || boundaries.numel() == 0) return;
  const at::Tensor a = boundaries.select(2, axis_index).narrow(2, 0, axis.out + 1);
  const at::Tensor steps = a.diff(1, 2);
  TORCH_CHECK(a.select(2, 0).eq(0).all().item<bool>() && a.select(2, axis.out).eq(axis.in).all().item<bool>(), op,
              ": boundaries[..., ", axis_index, ", :] must start at 0 and reach the input size ", axis.in, " at index ",
              axis.out);
  TORCH_CHECK(steps.ge(1).logical_and(steps.le(2)).all().item<bool>(), op, ": boundaries[..., ", axis_index,
              ", :] must increase in steps of 1 or 2");
}

std::vector<int64_t> pair(at::IntArrayRef values, const char* name, const char* op) {
  TORCH_CHECK(values.size() == 2, op, ": ", name, " must be a pair of ints (height, width), got ", values);
  return {values[0], values[1]};
}

// Sizes, regions and draws of one call; `x_like` gives the device and dtype the draws must match.
void configure(FmpParams& p, const at::Tensor& x_like, int64_t batch, int64_t channels, at::IntArrayRef input_size,
               at::IntArrayRef output_size, at::IntArrayRef kernel_size, const std::string& regions,
               const std::optional<at::Tensor>& samples, const std::optional<at::Tensor>& boundaries,
               std::vector<at::Tensor>& keep_alive, const char* op) {
  p.regions = parse_regions(regions, op);
  p.batch = batch;
  p.channels = channels;
  p.dtype = to_dtype(x_like.scalar_type());
  const auto in = pair(input_size, "input size", op), out = pair(output_size, "output_size", op);
  FmpAxis* axes[2] = {&p.rows, &p.cols};
  const char* names[2] = {"height", "width"};
  const bool window = p.regions == FmpRegions::Window;
  std::vector<int64_t> k = {0, 0};
  if (window) {
    k = pair(kernel_size, "kernel_size", op);
  } else {
    TORCH_CHECK(kernel_size.empty(), op, ": kernel_size is for regions='window'; Graham's '", regions,
                "' regions take none, got ", kernel_size);
  }
  for (int d = 0; d < 2; ++d) {
    FmpAxis& a = *axes[d];
    a.in = in[d];
    a.out = out[d];
    TORCH_CHECK(a.out >= 1, op, ": output_size must be positive, got ", a.out, " for the ", names[d]);
    TORCH_CHECK(a.out < a.in, op, ": the output ", names[d], " ", a.out, " must be smaller than the input ",
                names[d], " ", a.in);
    if (window) {
      a.kernel = k[d];
      TORCH_CHECK(a.kernel >= 1, op, ": kernel_size must be positive, got ", a.kernel, " for the ", names[d]);
      TORCH_CHECK(a.kernel + a.out - 1 <= a.in, op, ": kernel_size ", a.kernel, " is too large for output ",
                  names[d], " ", a.out, " from input ", names[d], " ", a.in, " (needs kernel_size + output - 1 <= input)");
      a.span = a.kernel;
      a.alpha = window_alpha(a.in, a.kernel, a.out, x_like);
    } else {
      TORCH_CHECK(a.in <= 2 * a.out, op, ": Graham's regions take 1 or 2 rows each, so the input ", names[d], " ",
                  a.in, " can be at most twice the output ", names[d], " ", a.out);
      a.span = p.regions == FmpRegions::Disjoint ? 2 : 3;
      a.alpha = x_like.scalar_type() == at::kDouble ? static_cast<double>(a.in) / static_cast<double>(a.out)
                                                    : static_cast<double>(static_cast<float>(a.in) / static_cast<float>(a.out));
    }
  }
  TORCH_CHECK(samples.has_value() != boundaries.has_value(), op, ": pass exactly one of samples and boundaries");
  TORCH_CHECK(!(window && boundaries.has_value()), op, ": regions='window' takes samples, not boundaries");
  if (samples.has_value()) {
    const at::Tensor& s = *samples;
    check_same_device(s, x_like, "samples", op);
    TORCH_CHECK(s.scalar_type() == x_like.scalar_type(), op, ": samples must have the input's dtype ",
                x_like.scalar_type(), ", got ", s.scalar_type());
    TORCH_CHECK(s.dim() == 3 && s.size(0) == batch && s.size(1) == channels && s.size(2) == 2, op,
                ": samples must have shape (N, C, 2) = (", batch, ", ", channels, ", 2), got ", s.sizes());
    check_sample_values(s, op);
    keep_alive.push_back(s);
    p.samples = s.data_ptr();
    p.sample_stride_n = s.stride(0);
    p.sample_stride_c = s.stride(1);
    p.sample_stride_axis = s.stride(2);
  } else {
    const at::Tensor& b = *boundaries;
    check_same_device(b, x_like, "boundaries", op);
    TORCH_CHECK(b.scalar_type() == at::kLong, op, ": boundaries must be int64, got ", b.scalar_type());
    const int64_t length = std::max(p.rows.out, p.cols.out) + 1;
    TORCH_CHECK(b.dim() == 4 && b.size(0) == batch && b.size(1) == channels && b.size(2) == 2 && b.size(3) >= length,
                op, ": boundaries must have shape (N, C, 2, L) = (", batch, ", ", channels, ", 2, >= ", length,
                "), got ", b.sizes());
    check_boundary_values(b, p.cols, 0, op);
    check_boundary_values(b, p.rows, 1, op);
    keep_alive.push_back(b);
    p.boundaries = b.data_ptr<int64_t>();
    p.boundary_stride_n = b.stride(0);
    p.boundary_stride_c = b.stride(1);
    p.boundary_stride_axis = b.stride(2);
    p.boundary_stride_i = b.stride(3);
  }
}

Strides4 strides4(const at::Tensor& t) { return Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

void check_input(const at::Tensor& t, const char* name, const char* op) {
  check_nc_input(t, name, op);
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-dimensional (N, C, H, W), got shape ", t.sizes());
}

}  // namespace

FmpCall fmp_forward_call(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef output_size,
                         const std::string& regions, const std::optional<at::Tensor>& samples,
                         const std::optional<at::Tensor>& boundaries, bool return_indices) {
  check_input(x, "x", kForward);
  FmpCall call;
  FmpParams& p = call.params;
  configure(p, x, x.size(0), x.size(1), {x.size(2), x.size(3)}, output_size, kernel_size, regions, samples, boundaries,
            call.keep_alive, kForward);
  p.wide_index = return_indices || p.rows.span * p.cols.span > 256;
  const at::MemoryFormat format = dense_format(x);
  const at::Tensor dense = x.contiguous(format);
  call.keep_alive.push_back(dense);
  const std::vector<int64_t> sizes = {x.size(0), x.size(1), p.rows.out, p.cols.out};
  call.output = empty_output(sizes, x.options(), format);
  call.index = empty_output(sizes, x.options().dtype(p.wide_index ? at::kLong : at::kByte), format);
  p.input = dense.data_ptr();
  p.output = call.output.data_ptr();
  p.index = call.index.data_ptr();
  p.in_strides = strides4(dense);
  p.out_strides = strides4(call.output);
  return call;
}

FmpCall fmp_backward_call(const at::Tensor& grad_y, const at::Tensor& index, at::IntArrayRef input_size,
                          at::IntArrayRef kernel_size, const std::string& regions,
                          const std::optional<at::Tensor>& samples, const std::optional<at::Tensor>& boundaries) {
  check_input(grad_y, "grad_y", kBackward);
  TORCH_CHECK(index.scalar_type() == at::kLong || index.scalar_type() == at::kByte, kBackward,
              ": index must be int64 or uint8, got ", index.scalar_type());
  TORCH_CHECK(index.sizes() == grad_y.sizes(), kBackward, ": index must have grad_y's shape ", grad_y.sizes(),
              ", got ", index.sizes());
  check_same_device(index, grad_y, "index", kBackward);
  FmpCall call;
  FmpParams& p = call.params;
  configure(p, grad_y, grad_y.size(0), grad_y.size(1), input_size, {grad_y.size(2), grad_y.size(3)}, kernel_size,
            regions, samples, boundaries, call.keep_alive, kBackward);
  p.wide_index = index.scalar_type() == at::kLong;
  TORCH_CHECK(p.wide_index || p.rows.span * p.cols.span <= 256, kBackward,
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
  return call;
}

}  // namespace cifarops
