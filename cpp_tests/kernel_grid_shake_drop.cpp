// ShakeDrop's kernel (shake_drop_thread, csrc/include/cifarops/shake_drop.h) over its whole launch grid on the
// host, against the CPU op: every dtype, the packet and scalar paths, rows that are not a whole number of
// packets, channels_last, narrower shortcuts, every level and gate level, evaluation, and both directions (the
// backward is the same kernel with beta and no shortcut), each also through the 64-bit-index instantiation.
// Stochastic depth is the same kernel with a zero coefficient and the gate worth s: its cases run here too.
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <string>
#include <vector>

#include "args/rng.h"
#include "args/shake_drop.h"
#include "args/stochastic_depth.h"
#include "cifarops/shake_drop.h"
#include "kernel_grid.h"

namespace kernel_grid {
namespace {

using cifarops::ShakeDropParams;

Paths paths;

// The CUDA launcher's choice, on the host; `wide` runs the 64-bit-index instantiation instead of the 32-bit one.
template <typename scalar_t>
void launch_on_host(const ShakeDropParams& p, bool wide) {
  cifarops::ShakeDropLaunch launch = cifarops::shake_drop_launch<scalar_t>(p);
  paths.saw(launch.vectorize ? "packets" : "scalars");
  if (strides(p.numel() / (launch.vectorize ? cifarops::packet_size<scalar_t>() : 1), launch.blocks)) {
    paths.saw("the grid-stride loop");
  }
  if (wide) launch.small = false;
  cifarops::shake_drop_dispatch<scalar_t>(launch, [&]<int kVec, typename index_t>() {
    run_grid<index_t>(launch.blocks, [&](index_t block, index_t thread, index_t blocks) {
      cifarops::shake_drop_thread<scalar_t, kVec, index_t>(p, block, thread, blocks);
    });
  });
}

void launch_any(const ShakeDropParams& p, at::ScalarType type, bool wide) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "shake_drop_grid", [&] {
    launch_on_host<scalar_t>(p, wide);
  });
}

struct Case {
  std::vector<int64_t> shape;
  int64_t shortcut_channels;  // 0: none
  bool channels_last;
  std::string gate_level, level;
  bool training;
};

using ForwardSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, double, at::ArrayRef<double>, at::ArrayRef<double>,
    c10::string_view, c10::string_view, bool, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&);
using BackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, double, at::ArrayRef<double>,
                               at::ArrayRef<double>, c10::string_view, c10::string_view, bool,
                               const std::optional<at::Tensor>&, const std::optional<at::Tensor>&);

void check(const Case& c, at::ScalarType type) {
  static auto forward = c10::Dispatcher::singleton().findSchemaOrThrow("cifarops::shake_drop", "").typed<ForwardSig>();
  static auto backward =
      c10::Dispatcher::singleton().findSchemaOrThrow("cifarops::_shake_drop_backward", "").typed<BackwardSig>();
  const auto format = c.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor h = at::randn(c.shape).to(type).contiguous(format);
  std::optional<at::Tensor> shortcut;
  if (c.shortcut_channels > 0) {
    std::vector<int64_t> shape = c.shape;
    shape[1] = c.shortcut_channels;
    shortcut = at::randn(shape).to(type).contiguous(format);
  }
  const at::Tensor state = at::tensor({int64_t(0x5eed1234abcdLL), int64_t(8)}, at::kLong);
  const std::vector<double> alpha{-1.0, 1.0}, beta{0.0, 1.0};
  const double p_drop = 0.5;
  std::string what = "shake_drop " + std::string(c10::toString(type)) + " shape " + c10::str(c.shape) +
                     " shortcut " + std::to_string(c.shortcut_channels) +
                     (c.channels_last ? " channels_last" : " nchw") + " gate " + c.gate_level + " level " + c.level +
                     (c.training ? " train" : " eval");
  for (bool wide : {false, true}) {
    const std::string path = what + (wide ? " int64" : " int32");
    // forward
    const at::Tensor expected = std::get<0>(forward.call(h, shortcut, p_drop, alpha, beta, c.gate_level, c.level,
                                                         c.training, std::nullopt, std::nullopt, std::nullopt, state));
    cifarops::ShakeDropCall call = cifarops::shake_drop_forward_call(
        h, shortcut, p_drop, alpha, beta, c.gate_level, c.level, c.training, std::nullopt, std::nullopt, std::nullopt,
        state);
    call.params.rng = cifarops::cpu_state(state, call.draws);
    call.out.fill_(std::nan(""));  // what the grid does not write shows
    launch_any(call.params, type, wide);
    expect(call.out.equal(expected), path + " forward");
    // backward: the same kernel, with beta and no shortcut
    const at::Tensor grad = at::randn(c.shape).to(type).contiguous(format);
    const at::Tensor grad_expected =
        backward.call(grad, state, p_drop, alpha, beta, c.gate_level, c.level, c.training, std::nullopt, std::nullopt);
    cifarops::ShakeDropCall back = cifarops::shake_drop_backward_call(grad, state, p_drop, alpha, beta, c.gate_level,
                                                                      c.level, c.training, std::nullopt, std::nullopt);
    back.params.rng = cifarops::cpu_state(state, back.draws);
    back.out.fill_(std::nan(""));
    launch_any(back.params, type, wide);
    expect(back.out.equal(grad_expected), path + " backward");
  }
}

using DepthSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const std::optional<at::Tensor>&, double,
                                                    c10::string_view, bool, bool, const std::optional<at::Tensor>&,
                                                    const std::optional<at::Tensor>&);
using DepthBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, double, c10::string_view, bool, bool,
                                    const std::optional<at::Tensor>&);

// Stochastic depth's forward and backward over the grid against its CPU op (mode "row" or "batch", scaled or
// Huang's form, in training or evaluation).
void check_stochastic_depth(const Case& c, at::ScalarType type, bool scale_by_keep) {
  static auto forward =
      c10::Dispatcher::singleton().findSchemaOrThrow("cifarops::stochastic_depth", "").typed<DepthSig>();
  static auto backward = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cifarops::_stochastic_depth_backward", "")
                             .typed<DepthBackwardSig>();
  const auto format = c.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor h = at::randn(c.shape).to(type).contiguous(format);
  std::optional<at::Tensor> shortcut;
  if (c.shortcut_channels > 0) {
    std::vector<int64_t> shape = c.shape;
    shape[1] = c.shortcut_channels;
    shortcut = at::randn(shape).to(type).contiguous(format);
  }
  const at::Tensor state = at::tensor({int64_t(0x5eed1234abcdLL), int64_t(8)}, at::kLong);
  const double p = 0.3;
  const std::string what = "stochastic_depth " + std::string(c10::toString(type)) + " shape " + c10::str(c.shape) +
                           " shortcut " + std::to_string(c.shortcut_channels) +
                           (c.channels_last ? " channels_last" : " nchw") + " mode " + c.level +
                           (scale_by_keep ? " scaled" : " unscaled") + (c.training ? " train" : " eval");
  const at::Tensor expected =
      std::get<0>(forward.call(h, shortcut, p, c.level, scale_by_keep, c.training, std::nullopt, state));
  cifarops::ShakeDropCall call =
      cifarops::stochastic_depth_forward_call(h, shortcut, p, c.level, scale_by_keep, c.training, std::nullopt, state);
  call.params.rng = cifarops::cpu_state(state, call.draws);
  call.out.fill_(std::nan(""));
  launch_any(call.params, type, false);
  expect(call.out.equal(expected), what + " forward");
  const at::Tensor grad = at::randn(c.shape).to(type).contiguous(format);
  const at::Tensor grad_expected = backward.call(grad, state, p, c.level, scale_by_keep, c.training, std::nullopt);
  cifarops::ShakeDropCall back =
      cifarops::stochastic_depth_backward_call(grad, state, p, c.level, scale_by_keep, c.training, std::nullopt);
  back.params.rng = cifarops::cpu_state(state, back.draws);
  back.out.fill_(std::nan(""));
  launch_any(back.params, type, false);
  expect(back.out.equal(grad_expected), what + " backward");
}

}  // namespace

void shake_drop() {
  const std::vector<at::ScalarType> types{at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
  std::vector<Case> grid;
  // Rows of whole packets for every dtype (H x W = 32 in NCHW, C = 16 or 8 in channels_last) and rows that are
  // not (H x W = 15, C = 6 or 3): the packet path, the scalar path, and a shortcut that breaks the packets.
  // (N, C) inputs walk their C vector as rows (channels_last), in packets where C holds whole ones.
  const std::vector<std::vector<int64_t>> shapes{{3, 16, 4, 8}, {2, 6, 3, 5}, {5, 8, 1, 1}, {4, 16}, {3, 6}};
  for (const auto& shape : shapes) {
    for (int64_t shortcut : {int64_t(0), shape[1], shape[1] / 2}) {
      for (bool channels_last : {false, true}) {
        if (channels_last && shape.size() != 4) continue;
        for (const std::string level : {"batch", "sample", "channel", "pixel"}) {
          for (const std::string gate_level : {"batch", "sample"}) {
            grid.push_back({shape, shortcut, channels_last, gate_level, level, true});
          }
        }
        grid.push_back({shape, shortcut, channels_last, "batch", "sample", false});
      }
    }
  }
  for (const Case& c : grid) {
    for (at::ScalarType type : types) check(c, type);
  }
  // Stochastic depth: packets and scalars, a narrower shortcut, channels_last, both modes and forms, evaluation.
  for (const auto& shape : {std::vector<int64_t>{3, 16, 4, 8}, std::vector<int64_t>{2, 6, 3, 5}}) {
    for (bool channels_last : {false, true}) {
      for (const std::string mode : {"row", "batch"}) {
        for (bool training : {true, false}) {
          for (bool scaled : {true, false}) {
            for (at::ScalarType type : types) {
              check_stochastic_depth({shape, shape[1] / 2, channels_last, "", mode, training}, type, scaled);
            }
          }
        }
      }
    }
  }
  // The grid-stride loop: more elements than the capped grid (65536 blocks of 256 threads) has threads.
  check({{1, 1, 4099, 4099}, 0, false, "batch", "sample", true}, at::kFloat);  // odd rows: scalar
  // An (N, C) input of whole packets takes the packet path (it never did when its rows were 1 x 1 planes).
  for (at::ScalarType type : types) {
    const at::Tensor h = at::randn({4, 16}).to(type);
    const cifarops::ShakeDropCall call = cifarops::shake_drop_forward_call(
        h, std::nullopt, 0.5, {-1.0, 1.0}, {0.0, 1.0}, "batch", "sample", true, std::nullopt, std::nullopt,
        std::nullopt, std::nullopt);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "shake_drop_nc", [&] {
      expect(cifarops::shake_drop_launch<scalar_t>(call.params).vectorize,
             "shake_drop " + std::string(c10::toString(type)) + " (4, 16): packets");
    });
  }
  paths.expect_all("shake_drop", {"packets", "scalars", "the grid-stride loop"});
}

}  // namespace kernel_grid
