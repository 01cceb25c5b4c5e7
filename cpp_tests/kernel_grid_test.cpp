// Runs the CUDA kernels' whole launch grids on the host (issue 18, item 1): every thread of every block, as
// the launcher sizes the grid (shake_drop_launch), through the instantiation it would launch
// (shake_drop_dispatch), and compares with the CPU op, bit for bit. Launch geometry, packet alignment, tails
// and the grid-stride loop go wrong here first: every dtype, the packet and scalar paths, rows that are not a
// whole number of packets, channels_last, narrower shortcuts, every level and gate level, evaluation, and
// both directions (the backward is the same kernel with beta and no shortcut). Each case also runs the
// 64-bit-index instantiation, which the launcher takes only past 2^31 elements. What it cannot show: races
// (the threads run one after another) and the CUDA side of the RNG state (resolve_rng; the state comes from
// the same explicit tensor here).
//
// So far ShakeDrop, whose kernel body is host/device code in csrc/include/cifarops/shake_drop.h; the other
// kernels follow the same pattern (docs/ARCHITECTURE.md).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "args/rng.h"
#include "args/shake_drop.h"
#include "cifarops/shake_drop.h"

namespace {

using cifarops::kElementwiseThreads;
using cifarops::ShakeDropParams;

int failures = 0, cases = 0;
bool saw_packets = false, saw_scalar = false, saw_grid_stride = false;

void expect(bool ok, const std::string& what) {
  ++cases;
  if (!ok) {
    std::cout << "FAIL " << what << "\n";
    ++failures;
  }
}

// Every thread of a grid of `blocks` blocks, one after another (the kernel's threads write disjoint packets).
template <typename scalar_t, int kVec, typename index_t>
void run_grid(const ShakeDropParams& p, unsigned blocks) {
  for (index_t block = 0; block < static_cast<index_t>(blocks); ++block) {
    for (index_t thread = 0; thread < kElementwiseThreads; ++thread) {
      cifarops::shake_drop_thread<scalar_t, kVec, index_t>(p, block, thread, static_cast<index_t>(blocks));
    }
  }
}

// The CUDA launcher's choice, on the host; `wide` runs the 64-bit-index instantiation instead of the 32-bit one.
template <typename scalar_t>
void launch_on_host(const ShakeDropParams& p, bool wide) {
  cifarops::ShakeDropLaunch launch = cifarops::shake_drop_launch<scalar_t>(p);
  (launch.vectorize ? saw_packets : saw_scalar) = true;
  const int64_t items = p.numel() / (launch.vectorize ? cifarops::packet_size<scalar_t>() : 1);
  saw_grid_stride = saw_grid_stride || items > int64_t(launch.blocks) * kElementwiseThreads;
  if (wide) launch.small = false;
  cifarops::shake_drop_dispatch<scalar_t>(launch, [&]<int kVec, typename index_t>() {
    run_grid<scalar_t, kVec, index_t>(p, launch.blocks);
  });
}

void launch_any(const ShakeDropParams& p, at::ScalarType type, bool wide) {
  switch (type) {
    case at::kFloat: return launch_on_host<float>(p, wide);
    case at::kDouble: return launch_on_host<double>(p, wide);
    case at::kHalf: return launch_on_host<c10::Half>(p, wide);
    default: return launch_on_host<c10::BFloat16>(p, wide);
  }
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
  const at::Tensor h = torch::randn(c.shape).to(type).contiguous(format);
  std::optional<at::Tensor> shortcut;
  if (c.shortcut_channels > 0) {
    std::vector<int64_t> shape = c.shape;
    shape[1] = c.shortcut_channels;
    shortcut = torch::randn(shape).to(type).contiguous(format);
  }
  const at::Tensor state = torch::tensor({int64_t(0x5eed1234abcdLL), int64_t(8)}, torch::kLong);
  const std::vector<double> alpha{-1.0, 1.0}, beta{0.0, 1.0};
  const double p_drop = 0.5;
  std::string what = std::string(c10::toString(type)) + " shape " + c10::str(c.shape) + " shortcut " +
                     std::to_string(c.shortcut_channels) + (c.channels_last ? " channels_last" : " nchw") + " gate " +
                     c.gate_level + " level " + c.level + (c.training ? " train" : " eval");
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
    const at::Tensor grad = torch::randn(c.shape).to(type).contiguous(format);
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

}  // namespace

int main() {
  torch::manual_seed(0);
  const std::vector<at::ScalarType> types{at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
  std::vector<Case> grid;
  // Rows of whole packets for every dtype (H x W = 32 in NCHW, C = 16 or 8 in channels_last) and rows that are
  // not (H x W = 15, C = 6 or 3): the packet path, the scalar path, and a shortcut that breaks the packets.
  const std::vector<std::vector<int64_t>> shapes{{3, 16, 4, 8}, {2, 6, 3, 5}, {5, 8, 1, 1}};
  for (const auto& shape : shapes) {
    for (int64_t shortcut : {int64_t(0), shape[1], shape[1] / 2}) {
      for (bool channels_last : {false, true}) {
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
  // The grid-stride loop: more elements than the capped grid (65536 blocks of 256 threads) has threads.
  check({{1, 1, 4099, 4099}, 0, false, "batch", "sample", true}, at::kFloat);  // odd rows: scalar
  expect(saw_packets && saw_scalar && saw_grid_stride, "the packet path, the scalar path and the grid-stride loop all ran");
  std::cout << cases - failures << " of " << cases << " checks passed\n";
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
