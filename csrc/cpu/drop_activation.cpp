// Drop-Activation on the CPU: one pass, parallel over tiles of elements with at::parallel_for; the mask drawn
// from the CPU generator's state (one random64() per call).
#include <ATen/Dispatch.h>
#include <algorithm>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "args/drop_activation.h"
#include "args/rng.h"
#include "cifarops/drop_activation.h"

namespace cifarops {
namespace {

// A tile's mask bits, tile [begin, end) of memory indices: the explicit mask, drawn (NCHW: a block of Philox quads
// at once, philox_quads; channels_last: one call per element, its NCHW index being another), or none.
void tile_mask(const DropActivationParams& p, int64_t begin, int64_t end, uint8_t* kept) {
  const int64_t n = end - begin;
  if (!p.training) {
    std::fill(kept, kept + n, uint8_t(0));
  } else if (p.mask != nullptr) {
    std::copy(p.mask + begin, p.mask + end, kept);
  } else if (p.channels_last) {
    for (int64_t j = 0; j < n; ++j) {
      kept[j] = philox_keep(philox_uniform(p.rng, drop_activation_logical<int64_t>(p, begin + j), 0), p.keep);
    }
  } else {
    uint32_t words[4 * 256];
    const int64_t first = begin / 4;
    philox_quads(p.rng, static_cast<uint64_t>(first), 0, static_cast<int>((end + 3) / 4 - first), words);
    const uint32_t* w = words + (begin - 4 * first);
    for (int64_t j = 0; j < n; ++j) kept[j] = philox_keep(philox_bits_to_uniform(w[j]), p.keep);
  }
}

// Tiles of 1024 elements (a multiple of 4, so NCHW tiles start on a quad): the mask first, then a pass of
// drop_activation_value, whose branches on the direction and mode are the same for the whole loop.
template <typename scalar_t>
void drop_activation_elements(const DropActivationParams& p) {
  using acc_t = typename OpMath<scalar_t>::type;
  constexpr int64_t kTile = 1024;
  const scalar_t* CIFAROPS_RESTRICT in = static_cast<const scalar_t*>(p.in);
  const scalar_t* CIFAROPS_RESTRICT ys = static_cast<const scalar_t*>(p.y);
  scalar_t* CIFAROPS_RESTRICT out = static_cast<scalar_t*>(p.out);
  at::parallel_for(0, (p.numel() + kTile - 1) / kTile, 16, [&](int64_t tile_begin, int64_t tile_end) {
    uint8_t kept[kTile];
    const DropActivationParams local = p;  // a copy the stores cannot alias: its fields stay in registers
    for (int64_t t = tile_begin; t < tile_end; ++t) {
      const int64_t begin = t * kTile, end = std::min(p.numel(), begin + kTile), n = end - begin;
      tile_mask(p, begin, end, kept);
      const scalar_t* CIFAROPS_RESTRICT v = in + begin;
      scalar_t* CIFAROPS_RESTRICT o = out + begin;
      if (p.backward()) {
        const scalar_t* CIFAROPS_RESTRICT y = ys + begin;
        for (int64_t j = 0; j < n; ++j) {
          o[j] = static_cast<scalar_t>(
              drop_activation_value<acc_t>(local, static_cast<acc_t>(v[j]), static_cast<acc_t>(y[j]), kept[j]));
        }
      } else if (p.in == p.out) {  // in place: one pointer, read then written at each index
        for (int64_t j = 0; j < n; ++j) {
          o[j] = static_cast<scalar_t>(drop_activation_value<acc_t>(local, static_cast<acc_t>(o[j]), acc_t(0), kept[j]));
        }
      } else {
        for (int64_t j = 0; j < n; ++j) {
          o[j] = static_cast<scalar_t>(drop_activation_value<acc_t>(local, static_cast<acc_t>(v[j]), acc_t(0), kept[j]));
        }
      }
    }
  });
}

void run(DropActivationCall& call) {
  call.params.rng = cpu_state(call.state_in, call.draws);
  if (!call.state.defined()) call.state = cpu_state_tensor(call.out, call.params.rng);
  if (call.params.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.out.scalar_type(), "drop_activation_cpu",
                                  [&] { drop_activation_elements<scalar_t>(call.params); });
}

std::tuple<at::Tensor, at::Tensor> drop_activation_cpu(const at::Tensor& x, double keep, bool training,
                                                       const std::optional<at::Tensor>& mask,
                                                       const std::optional<at::Tensor>& rng_state) {
  DropActivationCall call = drop_activation_forward_call(x, keep, training, mask, rng_state);
  run(call);
  return {call.out, call.state};
}

at::Tensor drop_activation_inplace_cpu(at::Tensor& x, double keep, bool training, const std::optional<at::Tensor>& mask,
                                       const std::optional<at::Tensor>& rng_state) {
  DropActivationCall call = drop_activation_inplace_call(x, keep, training, mask, rng_state);
  run(call);
  if (call.into.defined()) x.copy_(call.out);
  return call.state;
}

at::Tensor drop_activation_backward_cpu(const at::Tensor& grad_y, const at::Tensor& y, const at::Tensor& rng_state,
                                        double keep, bool training, const std::optional<at::Tensor>& mask) {
  DropActivationCall call = drop_activation_backward_call(grad_y, y, rng_state, keep, training, mask);
  run(call);
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cifarops, CPU, m) {
  m.impl("drop_activation", &drop_activation_cpu);
  m.impl("drop_activation_", &drop_activation_inplace_cpu);
  m.impl("_drop_activation_backward", &drop_activation_backward_cpu);
}

}  // namespace cifarops
