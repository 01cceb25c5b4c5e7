// Runs the element functions of csrc/include/cifarops/fractional_max_pool2d.h that the CUDA kernels use
// (forward per output, backward gathering per input) on the host, and checks them against the CPU op
// (region tables, scatter), element for element: the GPU's algorithm, tested on a machine without a GPU.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "args/fractional_max_pool2d.h"
#include "cifarops/fractional_max_pool2d.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::cout << (ok ? "ok   " : "FAIL ") << what << "\n";
  if (!ok) ++failures;
}

}  // namespace

int main() {
  using cifarops::FmpParams;
  auto forward = c10::Dispatcher::singleton()
                     .findSchemaOrThrow("cifarops::fractional_max_pool2d", "")
                     .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                         const at::Tensor&, at::IntArrayRef, at::IntArrayRef, c10::string_view,
                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool, c10::string_view,
                         bool, const std::optional<at::Tensor>&)>();
  auto backward = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("cifarops::_fractional_max_pool2d_backward", "")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, at::IntArrayRef,
                                        c10::string_view, const std::optional<at::Tensor>&,
                                        const std::optional<at::Tensor>&, c10::string_view, bool,
                                        const std::optional<at::Tensor>&)>();
  torch::manual_seed(0);
  for (const std::string regions : {"window", "disjoint", "overlapping"}) {
    for (const bool wide : {false, true}) {
      for (const bool channels_last : {false, true}) {
        const std::vector<int64_t> kernel = regions == "window" ? std::vector<int64_t>{3, 2} : std::vector<int64_t>{};
        const std::vector<int64_t> out = {8, 7}, in = {13, 11};
        at::Tensor x = torch::randint(0, 4, {2, 3, 13, 11}).to(torch::kFloat);  // many ties
        if (channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
        const at::Tensor samples = torch::rand({2, 3, 2});
        const auto [y, index, state] =
            forward.call(x, kernel, out, regions, samples, std::nullopt, wide, "pseudorandom", false, std::nullopt);
        const at::Tensor grad = torch::randn_like(y);
        const at::Tensor gx = backward.call(grad, index, c10::fromIntArrayRefSlow(in), kernel, regions, samples,
                                            std::nullopt, "pseudorandom", false, std::nullopt);
        const std::string label = regions + (wide ? " int64" : " uint8") + (channels_last ? " channels_last" : "");

        const cifarops::FmpCall f = cifarops::fmp_forward_call(x, kernel, out, regions, samples, std::nullopt, wide,
                                                               "pseudorandom", false, std::nullopt);
        for (int64_t n = 0; n < 2; ++n)
          for (int64_t c = 0; c < 3; ++c)
            for (int64_t oh = 0; oh < out[0]; ++oh)
              for (int64_t ow = 0; ow < out[1]; ++ow) cifarops::fmp_forward_element<float, float>(f.params, {}, n, c, oh, ow);
        expect(at::equal(f.output, y) && at::equal(f.index, index), label + ": forward elements equal the CPU op");

        const cifarops::FmpCall b = cifarops::fmp_backward_call(grad, index, in, kernel, regions, samples, std::nullopt,
                                                                "pseudorandom", false, std::nullopt);
        for (int64_t n = 0; n < 2; ++n)
          for (int64_t c = 0; c < 3; ++c)
            for (int64_t h = 0; h < in[0]; ++h)
              for (int64_t w = 0; w < in[1]; ++w) cifarops::fmp_backward_element<float, float>(b.params, {}, n, c, h, w);
        expect(at::equal(b.grad_input, gx), label + ": gathered backward equals the CPU op's scatter");
      }
    }
  }
  std::cout << (failures == 0 ? "all passed" : "FAILED") << "\n";
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
