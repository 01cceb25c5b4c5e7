// Shake-Shake's kernels (shake_shake_forward_thread, shake_shake_backward_thread in
// csrc/include/cifarops/shake_shake.h) over their whole two-dimensional launch grids on the host, against the
// CPU op: every dtype; samples of whole packets, samples that are not (scalars; double's two-element packets
// where float's four do not fit) and misaligned pointers (scalars); with and without the shortcut; NCHW and
// channels_last; every forward and backward mode, both levels, evaluation and explicit coefficients; the
// 64-bit-index instantiation; grids forced smaller than the work along both axes, and the capped grid of a
// sample larger than 65536 blocks and of a batch larger than 65535.
#include <ATen/core/dispatch/Dispatcher.h>

#include <string>
#include <vector>

#include "args/rng.h"
#include "args/shake_shake.h"
#include "cifarops/shake_shake.h"
#include "kernel_grid.h"

namespace kernel_grid {
namespace {

using cifarops::ShakeShakeLaunch;
using cifarops::ShakeShakeParams;

Paths paths;

// Which grid runs: the launcher's, with the 64-bit-index instantiation (`wide`), or one forced down to
// `forced_blocks` x `forced_samples` blocks (0: the launcher's).
struct Grid {
  bool wide = false;
  unsigned forced_blocks = 0, forced_samples = 0;
};

template <typename scalar_t, bool kForward>
void launch_on_host(const ShakeShakeParams& p, cifarops::PhiloxState s, Grid grid) {
  ShakeShakeLaunch launch = cifarops::shake_shake_launch<scalar_t>(p);
  if (grid.wide) launch.small = false;
  if (grid.forced_blocks > 0) launch.blocks = grid.forced_blocks;
  if (grid.forced_samples > 0) launch.sample_blocks = grid.forced_samples;
  paths.saw(launch.vectorize ? "packets" : "scalars");
  if (!launch.small) paths.saw("64-bit indices");
  if (strides(p.sample_size / (launch.vectorize ? cifarops::packet_size<scalar_t>() : 1), launch.blocks)) {
    paths.saw(grid.forced_blocks > 0 ? "a forced grid-stride loop over packets" : "the capped grid over packets");
  }
  if (p.batch > launch.sample_blocks) {
    paths.saw(grid.forced_samples > 0 ? "a forced grid-stride loop over samples" : "the capped grid over samples");
  }
  if (launch.vectorize) {
    // The packets' loads and stores need 16-byte alignment on the GPU, which the host does not enforce: every
    // pointer, and every sample's start (whole packets per sample).
    bool aligned = p.sample_size * sizeof(scalar_t) % 16 == 0;
    for (const void* ptr : {p.a, p.b, p.c, static_cast<const void*>(p.out0), static_cast<const void*>(p.out1)}) {
      aligned = aligned && reinterpret_cast<uintptr_t>(ptr) % 16 == 0;  // nullptr is aligned
    }
    expect(aligned, "shake_shake: packets only where every packet is 16-byte aligned");
  }
  cifarops::shake_shake_dispatch<scalar_t>(launch, [&]<int kVec, typename index_t>() {
    for (unsigned sample_block = 0; sample_block < launch.sample_blocks; ++sample_block) {
      run_grid<index_t>(launch.blocks, [&](index_t block, index_t thread, index_t blocks) {
        if constexpr (kForward) {
          cifarops::shake_shake_forward_thread<scalar_t, kVec, index_t>(p, s, block, thread, blocks, sample_block,
                                                                        launch.sample_blocks);
        } else {
          cifarops::shake_shake_backward_thread<scalar_t, kVec, index_t>(p, s, block, thread, blocks, sample_block,
                                                                         launch.sample_blocks);
        }
      });
    }
  });
}

template <bool kForward>
void launch_any(const ShakeShakeParams& p, cifarops::PhiloxState s, at::ScalarType type, Grid grid) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "shake_shake_grid", [&] {
    launch_on_host<scalar_t, kForward>(p, s, grid);
  });
}

struct Case {
  std::vector<int64_t> shape;
  bool shortcut, channels_last;
  std::string forward_mode, backward_mode, level;
  bool training;
  int64_t explicit_coefficients = 0;  // 0: none; 1 or N: alpha and beta of that shape
  int64_t misalign = 0;               // elements the tensors' data start past an aligned address
};

using ForwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                      const std::optional<at::Tensor>&, c10::string_view,
                                                      c10::string_view, c10::string_view, bool,
                                                      const std::optional<at::Tensor>&,
                                                      const std::optional<at::Tensor>&,
                                                      const std::optional<at::Tensor>&);
using BackwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                       const std::optional<at::Tensor>&, c10::string_view,
                                                       c10::string_view);

// A random tensor of `shape` in `type` and layout, its data `misalign` elements past an aligned address.
at::Tensor input(const Case& c, at::ScalarType type) {
  const auto format = c.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  if (c.misalign == 0) return at::randn(c.shape).to(type).contiguous(format);
  const int64_t numel = c10::multiply_integers(c.shape);
  return at::randn({numel + c.misalign}).to(type).narrow(0, c.misalign, numel).view(c.shape);
}

void check(const Case& c, at::ScalarType type, std::vector<Grid> grids) {
  static auto forward = c10::Dispatcher::singleton().findSchemaOrThrow("cifarops::shake_shake", "").typed<ForwardSig>();
  static auto backward =
      c10::Dispatcher::singleton().findSchemaOrThrow("cifarops::_shake_shake_backward", "").typed<BackwardSig>();
  const at::Tensor h1 = input(c, type), h2 = input(c, type);
  const std::optional<at::Tensor> shortcut = c.shortcut ? std::optional<at::Tensor>(input(c, type)) : std::nullopt;
  std::optional<at::Tensor> alpha, beta;
  if (c.explicit_coefficients > 0) {
    alpha = at::rand({c.explicit_coefficients}, at::kDouble);
    beta = at::rand({c.explicit_coefficients}, at::kFloat);
  }
  const at::Tensor state = at::tensor({int64_t(0x5eed1234abcdLL), int64_t(8)}, at::kLong);
  const std::string what = "shake_shake " + std::string(c10::toString(type)) + " shape " + c10::str(c.shape) +
                           (c.shortcut ? " shortcut" : "") + (c.channels_last ? " channels_last" : " nchw") +
                           (c.misalign ? " misaligned" : "") + " " + c.forward_mode + "/" + c.backward_mode + " " +
                           c.level + (c.training ? " train" : " eval") +
                           (c.explicit_coefficients ? " explicit " + std::to_string(c.explicit_coefficients) : "");
  const at::Tensor expected = std::get<0>(
      forward.call(h1, h2, shortcut, c.forward_mode, c.backward_mode, c.level, c.training, alpha, beta, state));
  const at::Tensor grad = input(c, type);
  const auto [grad1_expected, grad2_expected] = backward.call(grad, state, beta, c.backward_mode, c.level);
  for (const Grid& grid : grids) {
    const std::string path = what + (grid.wide ? " int64" : "") +
                             (grid.forced_blocks ? " grid " + std::to_string(grid.forced_blocks) + "x" +
                                                       std::to_string(grid.forced_samples)
                                                 : "");
    cifarops::ShakeShakeCall call = cifarops::shake_shake_forward_call(h1, h2, shortcut, c.forward_mode,
                                                                       c.backward_mode, c.level, c.training, alpha,
                                                                       beta, state);
    // The CPU op's state: the explicit one when the call draws (the CUDA kernel resolves the same).
    const cifarops::PhiloxState s = call.draws ? cifarops::cpu_state(state, true) : cifarops::PhiloxState{};
    poison(call.out0);
    launch_any<true>(call.params, s, type, grid);
    expect(bits_equal(call.out0, expected), path + " forward");

    cifarops::ShakeShakeCall back = cifarops::shake_shake_backward_call(grad, state, beta, c.backward_mode, c.level);
    const cifarops::PhiloxState bs = back.draws ? cifarops::cpu_state(state, true) : cifarops::PhiloxState{};
    poison(back.out0);
    poison(back.out1);
    launch_any<false>(back.params, bs, type, grid);
    expect(bits_equal(back.out0, grad1_expected) && bits_equal(back.out1, grad2_expected), path + " backward");
  }
}

}  // namespace

void shake_shake() {
  const std::vector<at::ScalarType> types{at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
  // The launcher's grid in both index widths, and a grid of 1 x 2 blocks: every sample of 700 elements and every
  // batch of three or more goes round both grid-stride loops.
  const std::vector<Grid> grids{{false, 0, 0}, {true, 0, 0}, {false, 1, 2}};
  std::vector<Case> cases;
  // Samples of 512 (whole packets for every dtype), 90 (double's packets only), 105 (scalars), 8 (one half
  // packet), 700 (more than a block's threads), and an empty batch.
  const std::vector<std::vector<int64_t>> shapes{{3, 16, 4, 8}, {2, 6, 3, 5}, {4, 3, 5, 7}, {5, 8, 1, 1},
                                                 {3, 7, 10, 10}, {0, 4, 2, 2}};
  for (const auto& shape : shapes) {
    for (bool shortcut : {false, true}) {
      for (bool channels_last : {false, true}) {
        for (const std::string level : {"batch", "sample"}) {
          for (const std::string forward_mode : {"shake", "even"}) {
            for (const std::string backward_mode : {"shake", "even", "keep"}) {
              cases.push_back({shape, shortcut, channels_last, forward_mode, backward_mode, level, true});
            }
          }
        }
        cases.push_back({shape, shortcut, channels_last, "shake", "shake", "sample", false});
      }
    }
    if (shape[0] > 0) {
      for (int64_t count : {int64_t(1), shape[0]}) {
        cases.push_back({shape, true, false, "shake", "shake", "sample", true, count});
      }
    }
    // Packet-sized samples at an address that is not 16-byte aligned: the scalar path.
    cases.push_back({shape, true, false, "shake", "keep", "sample", true, 0, 1});
  }
  for (const Case& c : cases) {
    for (at::ScalarType type : types) check(c, type, grids);
  }
  // The capped grids: a sample of more elements than 65536 blocks of 256 threads (odd: scalars), and a batch of
  // more samples than 65535 blocks along y.
  check({{1, 1, 4099, 4099}, true, false, "shake", "shake", "sample", true}, at::kFloat, {Grid{}});
  check({{65537, 3}, false, false, "shake", "keep", "sample", true}, at::kFloat, {Grid{}});
  paths.expect_all("shake_shake", {"packets", "scalars", "64-bit indices", "a forced grid-stride loop over packets",
                                   "a forced grid-stride loop over samples", "the capped grid over packets",
                                   "the capped grid over samples"});
}

}  // namespace kernel_grid
