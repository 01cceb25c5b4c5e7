// Maxout's and probabilistic maxout's kernels (maxout_forward_thread, maxout_backward_thread in
// csrc/include/cifarops/maxout.h) over their whole launch grids on the host, against the CPU op: every dtype;
// all three modes (maxout, the probabilistic draw, its expectation) and both backwards; both groupings; the
// instantiations the launcher picks (four outputs a step in NCHW order: rows of four moved as vectors, and the
// draw's fallback one output at a time, with output counts that are not a multiple of four and a misaligned
// input; channels fastest in channels_last; one output a step otherwise), the 64-bit-index one; dims in the
// middle, last and first; ties, NaN and infinities; grids forced down to one block, and the capped grid of more
// outputs (and inputs) than 65536 blocks of 256 threads.
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <string>
#include <vector>

#include "args/maxout.h"
#include "args/rng.h"
#include "cifarops/maxout.h"
#include "kernel_grid.h"

namespace kernel_grid {
namespace {

using cifarops::MaxoutLaunch;
using cifarops::MaxoutMode;
using cifarops::MaxoutParams;

Paths paths;

struct Grid {
  bool wide = false;          // the 64-bit-index instantiation
  unsigned forced_blocks = 0;  // 0: the launcher's blocks
};

MaxoutLaunch adjust(MaxoutLaunch launch, Grid grid) {
  if (grid.wide) launch.small = false;
  if (grid.forced_blocks > 0) launch.blocks = grid.forced_blocks;
  return launch;
}

const char* grid_name(Grid grid) { return grid.forced_blocks > 0 ? "a forced" : "the capped"; }

template <typename scalar_t>
void forward_on_host(const MaxoutParams& p, cifarops::PhiloxState state, Grid grid) {
  const MaxoutLaunch launch = adjust(cifarops::maxout_forward_launch(p), grid);
  if (!launch.launch) return;
  const int64_t total = p.output_numel();
  const int64_t items = launch.quad ? (total + 3) / 4 : total;
  const char* kind = !launch.quad             ? (launch.channel_fastest ? "channels fastest" : "one output a step")
                     : p.rows_of_four          ? "rows of four"
                                               : "quads one output at a time";
  paths.saw(std::string("forward: ") + kind);
  if (launch.quad && total % 4 != 0) paths.saw("forward: a partial last quad");
  if (!launch.small) paths.saw("forward: 64-bit indices");
  if (strides(items, launch.blocks)) paths.saw(std::string("forward: ") + grid_name(grid) + " grid-stride loop");
  cifarops::maxout_forward_dispatch(launch, [&]<typename index_t, bool kChannelFastest, bool kQuad>() {
    run_grid<index_t>(launch.blocks, [&](index_t block, index_t thread, index_t blocks) {
      cifarops::maxout_forward_thread<scalar_t, index_t, kChannelFastest, kQuad>(p, state, block, thread, blocks);
    });
  });
}

template <typename scalar_t>
void backward_on_host(const MaxoutParams& p, Grid grid) {
  const MaxoutLaunch launch = adjust(cifarops::maxout_backward_launch(p), grid);
  if (!launch.launch) return;
  paths.saw(launch.channel_fastest ? "backward: channels fastest" : "backward: inner fastest");
  if (!launch.small) paths.saw("backward: 64-bit indices");
  if (strides(p.input_numel(), launch.blocks)) paths.saw(std::string("backward: ") + grid_name(grid) + " grid-stride loop");
  cifarops::maxout_backward_dispatch(launch, [&]<typename index_t, bool kChannelFastest>() {
    run_grid<index_t>(launch.blocks, [&](index_t block, index_t thread, index_t blocks) {
      cifarops::maxout_backward_thread<scalar_t, index_t, kChannelFastest>(p, block, thread, blocks);
    });
  });
}

void forward_any(const MaxoutParams& p, cifarops::PhiloxState state, at::ScalarType type, Grid grid) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "maxout_forward_grid",
                                  [&] { forward_on_host<scalar_t>(p, state, grid); });
}

void backward_any(const MaxoutParams& p, at::ScalarType type, Grid grid) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "maxout_backward_grid",
                                  [&] { backward_on_host<scalar_t>(p, grid); });
}

struct Case {
  std::vector<int64_t> shape;
  int64_t pieces, dim;
  bool channels_last;
  std::string grouping;
  bool misaligned = false;  // the input one element into its buffer: no packet of four is aligned
};

using MaxoutSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t, c10::string_view);
using SampleSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t,
                                                                 c10::string_view, double,
                                                                 const std::optional<at::Tensor>&);
using ExpectationSig = at::Tensor(const at::Tensor&, int64_t, int64_t, c10::string_view, double);
using BackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t, c10::string_view);
using ExpectationBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t, c10::string_view,
                                          double);

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// Values with ties (a few integers), and, where `special`, a NaN and both infinities. The NaN is written in the
// dtype (its canonical bits): the kernel rounds every value through the compute type, which keeps a canonical
// NaN but not another payload (torch's CPU float-to-bfloat16 conversion writes NaN as 0xFFFF, which the kernel
// returns as 0x7FC0 and the CPU op's maxout, copying the input's bits, as 0xFFFF).
at::Tensor input(const Case& c, at::ScalarType type, bool special) {
  at::Tensor x = (at::randint(-3, 4, c.shape).to(at::kFloat) + at::randn(c.shape).mul_(0.25).round_()).to(type);
  if (c.misaligned) x = at::empty({x.numel() + 1}, x.options()).narrow(0, 1, x.numel()).view(c.shape).copy_(x);
  if (special && x.numel() >= 8) {
    at::Tensor flat = x.view(-1);
    flat[1].fill_(NAN);
    flat[4].fill_(INFINITY);
    flat[x.numel() - 2].fill_(-INFINITY);
  }
  return c.channels_last ? x.contiguous(at::MemoryFormat::ChannelsLast) : x;
}

void check(const Case& c, at::ScalarType type, const std::vector<Grid>& grids, bool special = true) {
  static auto maxout = op<MaxoutSig>("cifarops::maxout");
  static auto maxout_backward = op<BackwardSig>("cifarops::_maxout_backward");
  static auto sample = op<SampleSig>("cifarops::probabilistic_maxout");
  static auto expectation = op<ExpectationSig>("cifarops::probabilistic_maxout_expectation");
  static auto expectation_backward = op<ExpectationBackwardSig>("cifarops::_probabilistic_maxout_expectation_backward");
  const at::Tensor x = input(c, type, special);
  const at::Tensor state = at::tensor({int64_t(0x5eed1234abcdLL), int64_t(8)}, at::kLong);
  const double temperature = 0.75;
  const std::string what = "maxout " + std::string(c10::toString(type)) + " shape " + c10::str(c.shape) + " pieces " +
                           std::to_string(c.pieces) + " dim " + std::to_string(c.dim) + " " + c.grouping +
                           (c.channels_last ? " channels_last" : "") + (c.misaligned ? " misaligned" : "");
  const auto [y_max, index_max] = maxout.call(x, c.pieces, c.dim, c.grouping);
  const auto [y_sample, index_sample, state_out] = sample.call(x, c.pieces, c.dim, c.grouping, temperature, state);
  const at::Tensor y_expectation = expectation.call(x, c.pieces, c.dim, c.grouping, temperature);
  const at::Tensor grad_y = at::randn(y_max.sizes()).to(type).contiguous(y_max.suggest_memory_format());
  const at::Tensor grad_max = maxout_backward.call(grad_y, index_max, c.pieces, c.dim, c.grouping);
  const at::Tensor grad_sample = maxout_backward.call(grad_y, index_sample, c.pieces, c.dim, c.grouping);
  const at::Tensor grad_expectation = expectation_backward.call(grad_y, x, c.pieces, c.dim, c.grouping, temperature);
  for (const Grid& grid : grids) {
    const std::string path = what + (grid.wide ? " int64" : "") +
                             (grid.forced_blocks ? " grid " + std::to_string(grid.forced_blocks) : "");
    struct Forward {
      MaxoutMode mode;
      const char* name;
      const at::Tensor &y, *index;
    };
    for (const Forward& f : {Forward{MaxoutMode::Max, "maxout", y_max, &index_max},
                             Forward{MaxoutMode::Sample, "probabilistic", y_sample, &index_sample},
                             Forward{MaxoutMode::Expectation, "expectation", y_expectation, nullptr}}) {
      const bool draws = f.mode == MaxoutMode::Sample;
      const cifarops::MaxoutCall call = cifarops::maxout_forward_call(
          x, c.pieces, c.dim, c.grouping, f.mode, temperature, draws ? std::optional<at::Tensor>(state) : std::nullopt,
          "cifarops.maxout");
      poison(call.output);
      if (call.index.defined()) poison(call.index);
      forward_any(call.params, draws ? cifarops::cpu_state(state, true) : cifarops::PhiloxState{}, type, grid);
      expect(bits_equal(call.output, f.y) && (f.index == nullptr || at::equal(call.index, *f.index)),
             path + " " + f.name + " forward");
    }
    struct Backward {
      const char* name;
      const at::Tensor &index, &grad_x;
    };
    for (const Backward& b : {Backward{"maxout", index_max, grad_max}, Backward{"probabilistic", index_sample, grad_sample}}) {
      const cifarops::MaxoutCall call = cifarops::maxout_backward_call(grad_y, b.index, c.pieces, c.dim, c.grouping);
      poison(call.grad_input);
      backward_any(call.params, type, grid);
      expect(bits_equal(call.grad_input, b.grad_x), path + " " + b.name + " backward");
    }
    const cifarops::MaxoutCall call =
        cifarops::maxout_expectation_backward_call(grad_y, x, c.pieces, c.dim, c.grouping, temperature);
    poison(call.grad_input);
    backward_any(call.params, type, grid);
    expect(bits_equal(call.grad_input, grad_expectation), path + " expectation backward");
  }
}

}  // namespace

void maxout() {
  const std::vector<at::ScalarType> types{at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
  // The launcher's grid in both index widths, and one block: every case of more than 256 outputs (1024 for
  // the draw's quads) goes round the grid-stride loop.
  const std::vector<Grid> grids{{false, 0}, {true, 0}, {false, 1}};
  std::vector<Case> cases;
  for (const std::string grouping : {"contiguous", "strided"}) {
    for (bool channels_last : {false, true}) {
      // 90 outputs (90 % 4 = 2: a partial last quad), 1287 (more quads than a block's threads; 1287 % 4 = 3),
      // three pieces, and a single piece.
      cases.push_back({{2, 6, 3, 5}, 2, 1, channels_last, grouping});
      cases.push_back({{3, 6, 11, 13}, 2, 1, channels_last, grouping});
      cases.push_back({{2, 12, 3, 3}, 3, 1, channels_last, grouping});
      cases.push_back({{2, 4, 3, 5}, 1, 1, channels_last, grouping});
      // Other dims: the layout is made NCHW (channels_last is kept only for dim 1).
      cases.push_back({{2, 3, 6, 5}, 2, 2, channels_last, grouping});
      cases.push_back({{4, 3, 5, 6}, 3, -1, channels_last, grouping});
      // Rows of four: planes of 20 and 192 (576 steps: past a block's threads) and inner 8 under dim 2; and
      // the same plane misaligned, which falls back to one output at a time.
      cases.push_back({{2, 6, 4, 5}, 2, 1, channels_last, grouping});
      cases.push_back({{3, 8, 16, 12}, 4, 1, channels_last, grouping});
      cases.push_back({{2, 3, 6, 8}, 3, 2, channels_last, grouping});
      cases.push_back({{2, 6, 4, 5}, 2, 1, channels_last, grouping, true});
    }
    cases.push_back({{3, 7, 8}, 4, -1, false, grouping});  // channels last at unit stride, inner size 1
    cases.push_back({{5, 12}, 3, 1, false, grouping});
    cases.push_back({{6, 5, 7}, 2, 0, false, grouping});  // outer size 1
  }
  for (const Case& c : cases) {
    for (at::ScalarType type : types) check(c, type, grids);
  }
  // The capped grid: more outputs (and inputs) than 65536 blocks of 256 threads (the draw's quads fit in it).
  check({{1, 2, 4099, 4099}, 2, 1, false, "contiguous"}, at::kFloat, {Grid{}}, false);
  // The 32-bit path also offsets into the input, which holds `pieces` times the outputs: the forward takes it
  // only while the input has fewer than 2^31 elements (2^30 + 1 outputs of 2 pieces do not fit).
  cifarops::MaxoutParams big;
  big.outer = 1;
  big.inner = 1;
  big.pieces = 2;
  big.channels = (int64_t(1) << 31) + 2;
  big.group_count = big.channels / 2;
  expect(!cifarops::maxout_forward_launch(big).small, "maxout forward: 64-bit offsets for an input of 2^31 + 2");
  big.channels = (int64_t(1) << 31) - 2;
  big.group_count = big.channels / 2;
  expect(cifarops::maxout_forward_launch(big).small, "maxout forward: 32-bit offsets for an input of 2^31 - 2");
  paths.expect_all("maxout", {"forward: rows of four", "forward: quads one output at a time", "forward: channels fastest", "forward: one output a step",
                              "forward: a partial last quad", "forward: 64-bit indices",
                              "forward: a forced grid-stride loop", "forward: the capped grid-stride loop",
                              "backward: channels fastest", "backward: inner fastest", "backward: 64-bit indices",
                              "backward: a forced grid-stride loop", "backward: the capped grid-stride loop"});
}

}  // namespace kernel_grid
