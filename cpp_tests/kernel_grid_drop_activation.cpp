// Drop-Activation's kernel (drop_activation_thread, csrc/include/cifarops/drop_activation.h) over its whole launch
// grid on the host, against the CPU op: every dtype, the packet and scalar paths, channels_last (its per-element
// Philox index), training with the drawn and an explicit mask, evaluation, both directions (the backward reads the
// forward's output), NaN and zeros among the inputs, and the 64-bit-index instantiation.
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <string>
#include <vector>

#include "args/drop_activation.h"
#include "args/rng.h"
#include "cifarops/drop_activation.h"
#include "kernel_grid.h"

namespace kernel_grid {
namespace {

using cifarops::DropActivationParams;

Paths paths;

template <typename scalar_t>
void launch_on_host(const DropActivationParams& p, bool wide) {
  cifarops::DropActivationLaunch launch = cifarops::drop_activation_launch<scalar_t>(p);
  paths.saw(launch.vectorize ? "packets" : "scalars");
  if (strides(p.numel() / (launch.vectorize ? cifarops::packet_size<scalar_t>() : 1), launch.blocks)) {
    paths.saw("the grid-stride loop");
  }
  if (wide) launch.small = false;
  cifarops::drop_activation_dispatch<scalar_t>(launch, [&]<int kVec, typename index_t>() {
    run_grid<index_t>(launch.blocks, [&](index_t block, index_t thread, index_t blocks) {
      cifarops::drop_activation_thread<scalar_t, kVec, index_t>(p, block, thread, blocks);
    });
  });
}

void launch_any(const DropActivationParams& p, at::ScalarType type, bool wide) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "drop_activation_grid", [&] {
    launch_on_host<scalar_t>(p, wide);
  });
}

using ForwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double, bool,
                                                      const std::optional<at::Tensor>&,
                                                      const std::optional<at::Tensor>&);
using BackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, bool,
                               const std::optional<at::Tensor>&);

void check(const std::vector<int64_t>& shape, bool channels_last, bool training, bool explicit_mask,
           at::ScalarType type) {
  static auto forward =
      c10::Dispatcher::singleton().findSchemaOrThrow("cifarops::drop_activation", "").typed<ForwardSig>();
  static auto backward =
      c10::Dispatcher::singleton().findSchemaOrThrow("cifarops::_drop_activation_backward", "").typed<BackwardSig>();
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor x0 = at::randn(shape).to(type);
  x0.view(-1).index_put_({0}, std::nan(""));  // NaN and zeros take their own branches
  if (x0.numel() > 2) x0.view(-1).index_put_({2}, 0.0);
  const at::Tensor x = x0.contiguous(format);
  const at::Tensor state = at::tensor({int64_t(0x5eed1234abcdLL), int64_t(8)}, at::kLong);
  std::optional<at::Tensor> mask;
  if (explicit_mask && training) mask = at::rand(shape) < 0.5;
  const double keep = 0.7;
  const std::string what = "drop_activation " + std::string(c10::toString(type)) + " shape " + c10::str(shape) +
                           (channels_last ? " channels_last" : " nchw") + (training ? " train" : " eval") +
                           (mask.has_value() ? " explicit mask" : "");
  for (bool wide : {false, true}) {
    const std::string path = what + (wide ? " int64" : " int32");
    const at::Tensor expected = std::get<0>(forward.call(x, keep, training, mask, state));
    cifarops::DropActivationCall call = cifarops::drop_activation_forward_call(x, keep, training, mask, state);
    call.params.rng = cifarops::cpu_state(state, call.draws);
    poison(call.out);  // what the grid does not write shows
    launch_any(call.params, type, wide);
    expect(bits_equal(call.out, expected), path + " forward");
    at::Tensor x_in_place = x.clone(format);  // drop_activation_: the grid reads and writes one buffer
    cifarops::DropActivationCall in_place =
        cifarops::drop_activation_inplace_call(x_in_place, keep, training, mask, state);
    in_place.params.rng = cifarops::cpu_state(state, in_place.draws);
    expect(in_place.params.out == x_in_place.data_ptr() && !in_place.into.defined(), path + " in place, no copy");
    launch_any(in_place.params, type, wide);
    expect(bits_equal(x_in_place, expected), path + " forward in place");
    const at::Tensor grad = at::randn(shape).to(type).contiguous(format);
    const at::Tensor grad_expected = backward.call(grad, expected, state, keep, training, mask);
    cifarops::DropActivationCall back =
        cifarops::drop_activation_backward_call(grad, expected, state, keep, training, mask);
    back.params.rng = cifarops::cpu_state(state, back.draws);
    poison(back.out);
    launch_any(back.params, type, wide);
    expect(bits_equal(back.out, grad_expected), path + " backward");
  }
}

}  // namespace

void drop_activation() {
  const std::vector<at::ScalarType> types{at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
  // Whole packets for every dtype (3 x 16 x 4 x 8) and not (2 x 6 x 3 x 5), an (N, C) input.
  const std::vector<std::vector<int64_t>> shapes{{3, 16, 4, 8}, {2, 6, 3, 5}, {4, 16}};
  for (const auto& shape : shapes) {
    for (bool channels_last : {false, true}) {
      if (channels_last && shape.size() != 4) continue;
      for (bool training : {true, false}) {
        for (bool explicit_mask : {false, true}) {
          if (explicit_mask && !training) continue;
          for (at::ScalarType type : types) check(shape, channels_last, training, explicit_mask, type);
        }
      }
    }
  }
  // The grid-stride loop: more elements than the capped grid (65536 blocks of 256 threads) has threads.
  check({1, 1, 4099, 4099}, false, true, false, at::kFloat);  // odd: scalars
  paths.expect_all("drop_activation", {"packets", "scalars", "the grid-stride loop"});
}

}  // namespace kernel_grid
