// Stochastic pooling's kernel (stochastic_pool_thread, csrc/include/cifarops/stochastic_pool2d.h) over its whole
// launch grid on the host, as csrc/cuda/stochastic_pool2d.cu runs it, against the CPU op: every dtype; NCHW and
// channels_last; the training draw with drawn uniforms (the CPU op draws NCHW rows a block of Philox quads at a
// time, the kernel one uniform per output) and with explicit ones (0 and the largest below 1 among them), the
// expectation, both backward kinds; windows that overlap, leave gaps, are rectangular or hold 255 elements;
// padding and ceil mode; NaN, +inf and regions that sum to 0; no items; the signed 32-bit and the 64-bit
// instantiations; grids forced down to one block, and the capped grid of more outputs and inputs than 65536
// blocks of 256 threads.
#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <vector>

#include "args/rng.h"
#include "args/signatures.h"
#include "args/stochastic_pool2d.h"
#include "cifarops/stochastic_pool2d.h"
#include "kernel_grid.h"

namespace kernel_grid {
namespace {

using cifarops::StochasticPoolKind;
using cifarops::StochasticPoolLaunch;
using cifarops::StochasticPoolParams;

Paths paths;

struct Grid {
  bool wide = false;           // the 64-bit-index instantiation
  unsigned forced_blocks = 0;  // 0: the launcher's blocks
};

const char* kind_name(StochasticPoolKind kind) {
  switch (kind) {
    case StochasticPoolKind::Sample: return "sample";
    case StochasticPoolKind::Expectation: return "expectation";
    case StochasticPoolKind::SampleBackward: return "sample backward";
    default: return "expectation backward";
  }
}

template <typename scalar_t>
void run_on_host(const StochasticPoolParams& p, Grid grid) {
  StochasticPoolLaunch launch = cifarops::stochastic_pool_launch(p);
  if (!launch.launch) {
    paths.saw("no items: nothing launched");
    return;
  }
  if (grid.wide) launch.small = false;
  if (grid.forced_blocks > 0) launch.blocks = grid.forced_blocks;
  const std::string kind = std::string(kind_name(p.kind)) + ": ";
  paths.saw(kind + (p.channels_last ? "channels_last" : "nchw"));
  paths.saw(kind + (launch.small ? "32-bit indices" : "64-bit indices"));
  if (strides(p.items(), launch.blocks)) {
    paths.saw(kind + (grid.forced_blocks > 0 ? "a forced" : "the capped") + " grid-stride loop");
  }
  cifarops::stochastic_pool_dispatch(launch, [&](auto index) {
    using index_t = decltype(index);
    run_grid<index_t>(launch.blocks, [&](index_t block, index_t thread, index_t blocks) {
      cifarops::stochastic_pool_thread<scalar_t, index_t>(p, block, thread, blocks);
    });
  });
}

void run_any(const StochasticPoolParams& p, at::ScalarType type, Grid grid) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "stochastic_pool2d_grid",
                                  [&] { run_on_host<scalar_t>(p, grid); });
}

struct Case {
  std::vector<int64_t> shape;
  std::vector<int64_t> kernel, stride, padding;
  bool ceil_mode = false;
  bool channels_last = false;
};

// Mostly negative values, so that many regions sum to 0, and, where `special`, a NaN and a +inf (and a -inf,
// which is an activation of 0) a few elements apart.
at::Tensor input(const Case& c, at::ScalarType type, bool special) {
  at::Tensor x = (at::randn(c.shape) - 0.6).to(type);
  if (special && x.numel() >= 16) {
    at::Tensor flat = x.view(-1);
    flat[3].fill_(NAN);
    flat[x.numel() / 2].fill_(INFINITY);
    flat[x.numel() - 5].fill_(-INFINITY);
  }
  return c.channels_last ? x.contiguous(at::MemoryFormat::ChannelsLast) : x;
}

// The regions a case's expected outputs exercised (the NaN and zero branches must have run).
void saw_regions(const at::Tensor& y, const at::Tensor& offset) {
  if (offset.numel() == 0) return;
  if ((offset == cifarops::kStochasticPoolNone).any().item<bool>()) paths.saw("a region that sums to 0");
  if (y.isnan().any().item<bool>()) paths.saw("a region with a NaN");
  if (y.isinf().any().item<bool>()) paths.saw("a region with +inf");
  if ((offset != cifarops::kStochasticPoolNone).any().item<bool>()) paths.saw("a region that draws");
}

void check(const Case& c, at::ScalarType type, const std::vector<Grid>& grids, bool special = true) {
  const at::Tensor x = input(c, type, special);
  const at::Tensor state = at::tensor({int64_t(0x5eed1234abcdLL), int64_t(8)}, at::kLong);
  const at::IntArrayRef k(c.kernel), s(c.stride), pad(c.padding);
  const std::string what = "stochastic_pool2d " + std::string(c10::toString(type)) + " shape " + c10::str(c.shape) +
                           " kernel " + c10::str(c.kernel) + " stride " + c10::str(c.stride) + " padding " +
                           c10::str(c.padding) + (c.ceil_mode ? " ceil" : "") +
                           (c.channels_last ? " channels_last" : " nchw");
  const auto [y_drawn, offset_drawn, state_drawn] =
      cifarops::stochastic_pool_op().call(x, k, s, pad, c.ceil_mode, std::nullopt, state);
  expect(at::equal(state_drawn, state), what + ": the CPU op returns the explicit state");
  // Explicit uniforms, NCHW whatever x's layout (the call lays them out like y), with both ends of [0, 1).
  const at::Tensor uniforms = at::rand(y_drawn.sizes());
  if (uniforms.numel() >= 4) {
    uniforms.view(-1)[0].fill_(0.0f);
    uniforms.view(-1)[1].fill_(std::nextafter(1.0f, 0.0f));
  }
  const auto [y_given, offset_given, state_given] =
      cifarops::stochastic_pool_op().call(x, k, s, pad, c.ceil_mode, uniforms, std::nullopt);
  saw_regions(y_drawn, offset_drawn);
  saw_regions(y_given, offset_given);
  const at::Tensor y_expectation = cifarops::stochastic_pool_expectation_op().call(x, k, s, pad, c.ceil_mode);
  const at::Tensor grad_y = at::randn(y_drawn.sizes()).to(type).contiguous(y_drawn.suggest_memory_format());
  const std::vector<c10::SymInt> input_size{c10::SymInt(c.shape[2]), c10::SymInt(c.shape[3])};
  const at::Tensor grad_drawn =
      cifarops::stochastic_pool_backward_op().call(grad_y, offset_drawn, input_size, k, s, pad, c.ceil_mode);
  const at::Tensor grad_expectation =
      cifarops::stochastic_pool_expectation_backward_op().call(grad_y, x, k, s, pad, c.ceil_mode);
  for (const Grid& grid : grids) {
    const std::string path = what + (grid.wide ? " int64" : " int32") +
                             (grid.forced_blocks ? " grid " + std::to_string(grid.forced_blocks) : "");
    {  // Drawn uniforms: the state is the explicit one, as the CUDA kernel resolves it.
      cifarops::StochasticPoolCall call =
          cifarops::stochastic_pool_forward_call(x, k, s, pad, c.ceil_mode, std::nullopt, state, true);
      call.params.rng = cifarops::cpu_state(call.state_in, call.draws);
      if (call.draws) paths.saw("sample: drawn uniforms");
      poison(call.out);
      poison(call.offset);
      run_any(call.params, type, grid);
      expect(bits_equal(call.out, y_drawn) && bits_equal(call.offset, offset_drawn), path + " sample, drawn");
    }
    {
      cifarops::StochasticPoolCall call =
          cifarops::stochastic_pool_forward_call(x, k, s, pad, c.ceil_mode, uniforms, std::nullopt, true);
      call.params.rng = cifarops::cpu_state(call.state_in, call.draws);
      if (!call.draws && call.params.uniforms != nullptr) paths.saw("sample: explicit uniforms");
      poison(call.out);
      poison(call.offset);
      run_any(call.params, type, grid);
      expect(bits_equal(call.out, y_given) && bits_equal(call.offset, offset_given), path + " sample, explicit");
    }
    {
      cifarops::StochasticPoolCall call = cifarops::stochastic_pool_forward_call(
          x, k, s, pad, c.ceil_mode, std::nullopt, std::nullopt, false);
      poison(call.out);
      run_any(call.params, type, grid);
      expect(bits_equal(call.out, y_expectation), path + " expectation");
    }
    {
      cifarops::StochasticPoolCall call =
          cifarops::stochastic_pool_backward_call(grad_y, offset_drawn, input_size, k, s, pad, c.ceil_mode);
      poison(call.out);
      run_any(call.params, type, grid);
      expect(bits_equal(call.out, grad_drawn), path + " sample backward");
    }
    {
      cifarops::StochasticPoolCall call =
          cifarops::stochastic_pool_expectation_backward_call(grad_y, x, k, s, pad, c.ceil_mode);
      poison(call.out);
      run_any(call.params, type, grid);
      expect(bits_equal(call.out, grad_expectation), path + " expectation backward");
    }
  }
}

}  // namespace

void stochastic_pool2d() {
  const std::vector<at::ScalarType> types{at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
  // The launcher's grid in both index widths, and one block: every case of more than 256 items goes round the
  // grid-stride loop.
  const std::vector<Grid> grids{{false, 0}, {true, 0}, {false, 1}};
  std::vector<Case> cases;
  for (bool channels_last : {false, true}) {
    cases.push_back({{2, 3, 8, 8}, {2, 2}, {2, 2}, {0, 0}, false, channels_last});   // disjoint, 96 outputs
    cases.push_back({{2, 5, 9, 11}, {3, 3}, {2, 2}, {1, 1}, false, channels_last});  // overlapping, padded
    cases.push_back({{2, 5, 9, 11}, {3, 3}, {2, 2}, {1, 1}, true, channels_last});   // ceil mode's last window
    cases.push_back({{3, 4, 10, 7}, {3, 2}, {2, 3}, {1, 1}, true, channels_last});   // rectangular
    cases.push_back({{1, 6, 7, 10}, {2, 3}, {3, 4}, {0, 1}, false, channels_last});  // gaps between windows
    cases.push_back({{2, 7, 12, 13}, {3, 3}, {1, 1}, {1, 1}, false, channels_last}); // stride 1: 9 windows each
    cases.push_back({{2, 2, 16, 18}, {15, 17}, {4, 5}, {7, 8}, true, channels_last}); // 255 elements, offset 254
    cases.push_back({{1, 1, 3, 3}, {3, 3}, {1, 1}, {1, 1}, false, channels_last});   // one plane, < 16 elements
  }
  for (const Case& c : cases) {
    for (at::ScalarType type : types) check(c, type, grids);
  }
  // No items (an empty batch, no channels): the launcher launches nothing and the CPU op writes nothing.
  check({{0, 3, 5, 5}, {2, 2}, {2, 2}, {0, 0}, false, false}, at::kFloat, {Grid{}});
  check({{2, 0, 5, 5}, {2, 2}, {2, 2}, {0, 0}, false, true}, at::kFloat, {Grid{}});
  // The capped grid: more outputs (forward) and inputs (backward) than 65536 blocks of 256 threads.
  check({{1, 1, 4099, 4099}, {1, 1}, {1, 1}, {0, 0}, false, false}, at::kFloat, {Grid{}}, false);
  // The 32-bit index is taken while the input and the output stay below 2^31 minus one capped grid's threads
  // (the grid-stride loop's last step), whichever direction: the input is the larger here.
  StochasticPoolParams big;
  big.batch = 1;
  big.channels = 1;
  big.in_h = 46341;  // 46341^2 > 2^31
  big.in_w = 46341;
  big.out_h = 23170;
  big.out_w = 23170;
  big.kind = StochasticPoolKind::Sample;
  expect(!cifarops::stochastic_pool_launch(big).small, "stochastic_pool2d forward: 64-bit indices for an input of 46341^2");
  big.kind = StochasticPoolKind::SampleBackward;
  expect(!cifarops::stochastic_pool_launch(big).small, "stochastic_pool2d backward: 64-bit indices for an input of 46341^2");
  big.in_h = big.in_w = 46000;  // 2.116e9 < 2^31 - 2^24
  expect(cifarops::stochastic_pool_launch(big).small, "stochastic_pool2d: 32-bit indices for an input of 46000^2");
  big.in_h = 46400;  // 2.1344e9: below 2^31, but within one capped grid of it
  expect(!cifarops::stochastic_pool_launch(big).small,
         "stochastic_pool2d: 64-bit indices within one capped grid of 2^31");
  big.batch = 0;
  expect(!cifarops::stochastic_pool_launch(big).launch, "stochastic_pool2d: no items, no launch");
  paths.expect_all("stochastic_pool2d",
                   {"sample: nchw", "sample: channels_last", "expectation: nchw", "expectation: channels_last",
                    "sample backward: nchw", "sample backward: channels_last", "expectation backward: nchw",
                    "expectation backward: channels_last", "sample: drawn uniforms", "sample: explicit uniforms",
                    "sample: 32-bit indices", "sample: 64-bit indices", "expectation: 64-bit indices",
                    "sample backward: 64-bit indices", "expectation backward: 64-bit indices",
                    "sample: a forced grid-stride loop", "expectation: a forced grid-stride loop",
                    "sample backward: a forced grid-stride loop", "expectation backward: a forced grid-stride loop",
                    "sample: the capped grid-stride loop", "sample backward: the capped grid-stride loop",
                    "no items: nothing launched", "a region that sums to 0", "a region with a NaN",
                    "a region with +inf", "a region that draws"});
}

}  // namespace kernel_grid
