// Fractional max-pooling's kernels (fmp_forward_thread, fmp_backward_thread and the boundary-table kernel
// fmp_table_thread, in csrc/include/cifarops/fractional_max_pool2d.h) over their whole launch grids on the host,
// as csrc/cuda/fractional_max_pool2d.cu runs them (for random sequences the table kernel first, then the main
// kernel reading it), against the CPU op: every dtype; PyTorch's windows (2 x 2 and 3 x 3, which the CPU op
// takes on its own fast paths, rectangular ones, and regions of more than 256 elements, which need int64
// indices) and Graham's disjoint and overlapping regions; explicit samples and boundaries, drawn samples and
// drawn random sequences, per image and per channel; uint8 and int64 indices; NCHW and channels_last (channels
// fastest); the 64-bit-index instantiation; grids forced down to one block, and the capped grid of more
// outputs and inputs than 65536 blocks of 256 threads.
//
// One combination is left out on purpose: windows from drawn samples in half and bfloat16. ATen's CPU kernel
// does its interval arithmetic in the storage type and its CUDA kernel in float (cifarops follows each), so the
// two may choose different windows there; the windows of half and bfloat16 are checked with explicit samples
// and sizes whose interval arithmetic is exact in both (eighths, alphas 1, 1.5 and 2).
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "args/fractional_max_pool2d.h"
#include "args/rng.h"
#include "cifarops/fractional_max_pool2d.h"
#include "kernel_grid.h"

namespace kernel_grid {
namespace {

using cifarops::FmpDraw;
using cifarops::FmpLaunch;
using cifarops::FmpParams;
using cifarops::PhiloxState;

Paths paths;

struct Grid {
  bool wide = false;           // the 64-bit-index instantiation
  unsigned forced_blocks = 0;  // 0: the launcher's blocks
};

const char* grid_name(Grid grid) { return grid.forced_blocks > 0 ? "a forced" : "the capped"; }

template <typename scalar_t, bool kForward>
void main_on_host(const FmpParams& p, PhiloxState state, Grid grid) {
  FmpLaunch launch = cifarops::fmp_launch(p, kForward);
  if (!launch.launch) return;
  if (grid.wide) launch.small = false;
  if (grid.forced_blocks > 0) launch.blocks = grid.forced_blocks;
  const std::string direction = kForward ? "forward: " : "backward: ";
  paths.saw(direction + (launch.channel_fastest ? "channels fastest" : "width fastest"));
  if (!launch.small) paths.saw(direction + "64-bit indices");
  if (strides(launch.total, launch.blocks)) paths.saw(direction + grid_name(grid) + " grid-stride loop");
  cifarops::fmp_dispatch(launch, [&]<typename index_t, bool kChannelFastest>() {
    const index_t total = static_cast<index_t>(launch.total);
    run_grid<index_t>(launch.blocks, [&](index_t block, index_t thread, index_t blocks) {
      if constexpr (kForward) {
        cifarops::fmp_forward_thread<scalar_t, index_t, kChannelFastest>(p, state, total, block, thread, blocks);
      } else {
        cifarops::fmp_backward_thread<scalar_t, index_t, kChannelFastest>(p, state, total, block, thread, blocks);
      }
    });
  });
}

// What the CUDA op's run() does, on the host: the call's state; for random sequences the table kernel's grid
// into a fresh table (checked against the CPU op's table), which the main kernel then reads; the main kernel's
// grid. Returns the table (it must outlive the main kernel's run).
template <bool kForward>
at::Tensor run_on_host(cifarops::FmpCall& call, const at::Tensor& like, const at::Tensor& state_tensor,
                       at::ScalarType type, Grid grid, const std::string& what) {
  FmpParams& p = call.params;
  const PhiloxState state = call.draw != FmpDraw::None ? cifarops::cpu_state(state_tensor, true) : PhiloxState{};
  at::Tensor table;
  if (call.draw == FmpDraw::Sequences) {
    FmpParams cpu_params = p;
    const at::Tensor expected = cifarops::fmp_cpu_random_boundaries(cpu_params, state);
    table = cifarops::fmp_sequence_table(like, p);
    poison(table);
    const unsigned blocks = grid.forced_blocks > 0 ? grid.forced_blocks : cifarops::fmp_table_blocks(p);
    paths.saw("table: the boundary-table kernel");
    if (strides(cifarops::fmp_table_lanes(p), blocks)) paths.saw("table: a forced grid-stride loop");
    run_grid<int64_t>(blocks, [&](int64_t block, int64_t thread, int64_t count) {
      cifarops::fmp_table_thread(p, state, table.data_ptr<int64_t>(), table.size(3), block, thread, count);
    });
    expect(at::equal(table, expected), what + " boundary table");
  }
  // The main kernel resolves the state only when it draws the samples itself (after a table: zeros).
  const PhiloxState main_state = call.draw == FmpDraw::Samples ? state : PhiloxState{};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "fmp_grid",
                                  [&] { main_on_host<scalar_t, kForward>(p, main_state, grid); });
  return table;
}

enum class Draws { Samples, Boundaries, DrawnSamples, DrawnSequences };

struct Case {
  std::vector<int64_t> shape, out, kernel;  // shape (N, C, H, W); kernel: windows only
  std::string regions;
  Draws draws;
  bool per_image = false, return_indices = false, channels_last = false;
};

using ForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, at::IntArrayRef, at::IntArrayRef, c10::string_view, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, bool, c10::string_view, bool, const std::optional<at::Tensor>&);
using BackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, at::IntArrayRef,
                               c10::string_view, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                               c10::string_view, bool, const std::optional<at::Tensor>&);

// Random valid boundaries (N, C, 2, max(out) + 1): a_0 = 0, steps of 1 or 2 (in - out of them 2), a_out = in, then
// padded with in; index 0 of dim 2 the columns, 1 the rows.
at::Tensor random_boundaries(const Case& c) {
  const int64_t length = std::max(c.out[0], c.out[1]) + 1;
  at::Tensor b = at::empty({c.shape[0], c.shape[1], 2, length}, at::kLong);
  for (int64_t n = 0; n < c.shape[0]; ++n) {
    for (int64_t ch = 0; ch < c.shape[1]; ++ch) {
      for (int axis = 0; axis < 2; ++axis) {
        const int64_t in = c.shape[3 - axis], out = c.out[1 - axis];
        const at::Tensor twos = at::randperm(out, at::kLong).lt(in - out);  // which steps are 2
        int64_t position = 0;
        b[n][ch][axis][0].fill_(0);
        for (int64_t i = 0; i < out; ++i) {
          position += twos[i].item<bool>() ? 2 : 1;
          b[n][ch][axis][i + 1].fill_(position);
        }
        for (int64_t i = out + 1; i < length; ++i) b[n][ch][axis][i].fill_(in);
      }
    }
  }
  return b;
}

void check(const Case& c, at::ScalarType type, const std::vector<Grid>& grids) {
  static auto forward =
      c10::Dispatcher::singleton().findSchemaOrThrow("cifarops::fractional_max_pool2d", "").typed<ForwardSig>();
  static auto backward = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cifarops::_fractional_max_pool2d_backward", "")
                             .typed<BackwardSig>();
  // Few distinct values: many ties, whose first maximum both sides must pick.
  at::Tensor x = at::randint(0, 5, c.shape).to(type);
  if (c.channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
  std::optional<at::Tensor> samples, boundaries;
  if (c.draws == Draws::Samples) samples = (at::randint(0, 8, {c.shape[0], c.shape[1], 2}) / 8).to(type);  // eighths
  if (c.draws == Draws::Boundaries) boundaries = random_boundaries(c);
  const char* sequence = c.draws == Draws::DrawnSequences ? "random" : "pseudorandom";
  const at::Tensor state = at::tensor({int64_t(0x5eed1234abcdLL), int64_t(8)}, at::kLong);
  const std::vector<int64_t> in{c.shape[2], c.shape[3]};
  static const char* kDraws[] = {"samples", "boundaries", "drawn samples", "drawn sequences"};
  const std::string what = "fmp " + std::string(c10::toString(type)) + " shape " + c10::str(c.shape) + " out " +
                           c10::str(c.out) + " " + c.regions + " kernel " + c10::str(c.kernel) + " " +
                           kDraws[static_cast<int>(c.draws)] + (c.per_image ? " per image" : "") +
                           (c.return_indices ? " int64 index" : "") + (c.channels_last ? " channels_last" : "");
  paths.saw(kDraws[static_cast<int>(c.draws)]);
  const auto [y, index, state_out] = forward.call(x, c.kernel, c.out, c.regions, samples, boundaries,
                                                  c.return_indices, sequence, c.per_image, state);
  paths.saw(index.scalar_type() == at::kLong ? "int64 index" : "uint8 index");
  const at::Tensor grad_y = at::randn(y.sizes()).to(type).contiguous(y.suggest_memory_format());
  const at::Tensor grad_x = backward.call(grad_y, index, c10::fromIntArrayRefSlow(in), c.kernel, c.regions, samples,
                                          boundaries, sequence, c.per_image, state);
  for (const Grid& grid : grids) {
    const std::string path = what + (grid.wide ? " int64" : "") +
                             (grid.forced_blocks ? " grid " + std::to_string(grid.forced_blocks) : "");
    cifarops::FmpCall f = cifarops::fmp_forward_call(x, c.kernel, c.out, c.regions, samples, boundaries,
                                                     c.return_indices, sequence, c.per_image, state);
    // As for device tensors: every thread checks the explicit draws it uses (good ones here: nothing throws).
    const bool explicit_draws = samples.has_value() || boundaries.has_value();
    f.params.check_draws = explicit_draws;
    poison(f.output);
    poison(f.index);
    const at::Tensor forward_table = run_on_host<true>(f, x, state, type, grid, path + " forward");
    expect(bits_equal(f.output, y) && at::equal(f.index, index), path + " forward");
    cifarops::FmpCall b = cifarops::fmp_backward_call(grad_y, index, in, c.kernel, c.regions, samples, boundaries,
                                                      sequence, c.per_image, state);
    b.params.check_draws = explicit_draws;
    poison(b.grad_input);
    const at::Tensor backward_table = run_on_host<false>(b, grad_y, state, type, grid, path + " backward");
    expect(bits_equal(b.grad_input, grad_x), path + " backward");
  }
}

// Whether the host run of `call`'s main kernel stops with the device check's message naming `argument`.
template <bool kForward>
bool stops(cifarops::FmpCall& call, const at::Tensor& like, const char* argument) {
  call.params.check_draws = true;  // as the op sets it for device tensors
  try {
    run_on_host<kForward>(call, like, at::Tensor(), like.scalar_type(), Grid{}, "bad draws");
  } catch (const std::invalid_argument& e) {
    return std::string(e.what()).find(argument) != std::string::npos;
  }
  return false;
}

// Explicit draws the CPU op would reject, written into the draw tensors after the host's checks passed (as
// device tensors reach the kernels unread): every one stops the forward and the backward grid, where the
// unchecked kernels skipped outputs in the gather (decreasing boundaries) or aliased the one-byte index (a
// step of 3).
void bad_draws() {
  const std::vector<int64_t> shape{2, 3, 13, 11}, out{8, 7}, in{13, 11};
  const at::Tensor x = at::randn(shape);
  const auto forward_and_backward = [&](const std::optional<at::Tensor>& samples,
                                        const std::optional<at::Tensor>& boundaries, const char* regions,
                                        const std::function<void()>& spoil, const char* argument,
                                        const std::string& what) {
    cifarops::FmpCall f = cifarops::fmp_forward_call(x, {}, out, regions, samples, boundaries, false, "pseudorandom",
                                                     false, std::nullopt);
    const at::Tensor grad_y = at::randn(f.output.sizes());
    const at::Tensor index = f.index.clone();
    cifarops::FmpCall b = cifarops::fmp_backward_call(grad_y, index, in, {}, regions, samples, boundaries,
                                                      "pseudorandom", false, std::nullopt);
    spoil();
    expect(stops<true>(f, x, argument), what + ": the forward stops naming " + argument);
    expect(stops<false>(b, grad_y, argument), what + ": the backward stops naming " + argument);
  };
  const Case c{shape, out, {}, "disjoint", Draws::Boundaries};
  // Each spoils one plane's row (axis 1: in 13, out 8) or column (axis 0: in 11, out 7) sequence a.
  using Spoil = std::function<void(at::Tensor a)>;
  const std::vector<std::tuple<const char*, int64_t, int64_t, Spoil>> spoils{
      {"a step of 3", 1, 1, [](at::Tensor a) { a[3].fill_(a[2].item<int64_t>() + 3); }},
      {"a decrease", 4, 0, [](at::Tensor a) { a[2].fill_(a[1].item<int64_t>() - 1); }},
      {"a_0 = 1", 0, 1, [](at::Tensor a) { a[0].fill_(1); }},
      {"a_out short of the input", 5, 1, [](at::Tensor a) { a[8].fill_(12); }}};
  for (const char* regions : {"disjoint", "overlapping"}) {
    for (const auto& [name, plane, axis, spoil_axis] : spoils) {
      const at::Tensor boundaries = random_boundaries(c);
      const auto spoil = [&, plane = plane, axis = axis, spoil_axis = spoil_axis] {
        spoil_axis(boundaries.view({-1, 2, boundaries.size(3)})[plane][axis]);
      };
      forward_and_backward(std::nullopt, boundaries, regions, spoil, "boundaries",
                           std::string(regions) + " boundaries, " + name);
    }
  }
  for (const double bad : {1.0, -0.25, static_cast<double>(NAN)}) {
    for (const char* regions : {"disjoint", "window"}) {
      const at::Tensor samples = at::rand({2, 3, 2}) * 0.5;
      std::vector<int64_t> kernel;
      if (std::string(regions) == "window") kernel = {2, 2};
      cifarops::FmpCall f = cifarops::fmp_forward_call(x, kernel, out, regions, samples, std::nullopt, false,
                                                       "pseudorandom", false, std::nullopt);
      const at::Tensor grad_y = at::randn(f.output.sizes());
      cifarops::FmpCall b = cifarops::fmp_backward_call(grad_y, f.index.clone(), in, kernel, regions, samples,
                                                        std::nullopt, "pseudorandom", false, std::nullopt);
      samples[1][2][1].fill_(bad);
      const std::string what = std::string(regions) + " sample " + std::to_string(bad);
      expect(stops<true>(f, x, "samples"), what + ": the forward stops naming samples");
      expect(stops<false>(b, grad_y, "samples"), what + ": the backward stops naming samples");
    }
  }
}

}  // namespace

void fractional_max_pool2d() {
  bad_draws();
  const std::vector<at::ScalarType> types{at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
  // The launcher's grid in both index widths, and one block: every case (3 x 3 planes of 20 or more outputs)
  // goes round the grid-stride loops.
  const std::vector<Grid> grids{{false, 0}, {true, 0}, {false, 1}};
  std::vector<Case> cases;
  for (bool channels_last : {false, true}) {
    for (bool return_indices : {false, true}) {
      // Windows: 3 x 2 (alphas 2 and 1.5), 2 x 2 and 3 x 3 (the CPU op's fast paths), 17 x 16 (regions of more
      // than 256 elements: int64 indices whatever return_indices says).
      const std::vector<Case> windows{{{3, 3, 13, 11}, {6, 7}, {3, 2}, "window", Draws::Samples},
                                      {{3, 3, 12, 11}, {6, 7}, {2, 2}, "window", Draws::Samples},
                                      {{3, 3, 13, 11}, {6, 5}, {3, 3}, "window", Draws::Samples},
                                      {{3, 3, 20, 19}, {4, 4}, {17, 16}, "window", Draws::Samples}};
      for (Case c : windows) {
        c.channels_last = channels_last;
        c.return_indices = return_indices;
        cases.push_back(c);
        for (bool per_image : {false, true}) {
          Case drawn = c;
          drawn.draws = Draws::DrawnSamples;
          drawn.per_image = per_image;
          cases.push_back(drawn);
        }
      }
      for (const std::string regions : {"disjoint", "overlapping"}) {
        for (Draws draws : {Draws::Samples, Draws::Boundaries, Draws::DrawnSamples, Draws::DrawnSequences}) {
          for (bool per_image : {false, true}) {
            if (per_image && (draws == Draws::Samples || draws == Draws::Boundaries)) continue;
            Case c{{3, 3, 13, 11}, {8, 7}, {}, regions, draws, per_image, return_indices, channels_last};
            cases.push_back(c);
          }
        }
      }
    }
  }
  for (const Case& c : cases) {
    for (at::ScalarType type : types) {
      const bool half = type == at::kHalf || type == at::kBFloat16;
      if (half && c.regions == "window" && c.draws == Draws::DrawnSamples) continue;  // see the header
      check(c, type, grids);
    }
  }
  // The table kernel's grid-stride loop: 300 lanes (3 x 50 planes, two axes) in one block.
  check({{3, 50, 9, 7}, {5, 4}, {}, "disjoint", Draws::DrawnSequences}, at::kFloat, grids);
  check({{3, 50, 9, 7}, {5, 4}, {}, "overlapping", Draws::DrawnSequences, false, false, true}, at::kHalf, grids);
  // The capped grid: more outputs and inputs than 65536 blocks of 256 threads.
  check({{1, 1, 4098, 4098}, {4097, 4097}, {2, 2}, "window", Draws::Samples}, at::kFloat, {Grid{}});
  paths.expect_all("fractional_max_pool2d",
                   {"forward: channels fastest", "forward: width fastest", "forward: 64-bit indices",
                    "forward: a forced grid-stride loop", "forward: the capped grid-stride loop",
                    "backward: channels fastest", "backward: width fastest", "backward: 64-bit indices",
                    "backward: a forced grid-stride loop", "backward: the capped grid-stride loop",
                    "table: the boundary-table kernel", "table: a forced grid-stride loop", "uint8 index",
                    "int64 index", "samples", "boundaries", "drawn samples", "drawn sequences"});
}

}  // namespace kernel_grid
