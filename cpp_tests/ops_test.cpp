// Calls the cifarops ops from C++ through the dispatcher, with no Python, and checks hand-worked answers.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cstdlib>
#include <iostream>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::cout << (ok ? "ok   " : "FAIL ") << what << "\n";
  if (!ok) ++failures;
}

}  // namespace

int main() {
  using OptTensor = std::optional<at::Tensor>;
  auto shake_drop = c10::Dispatcher::singleton()
                        .findSchemaOrThrow("cifarops::shake_drop", "")
                        .typed<std::tuple<at::Tensor, at::Tensor>(
                            const at::Tensor&, const OptTensor&, double, at::ArrayRef<double>, at::ArrayRef<double>,
                            c10::string_view, c10::string_view, bool, const OptTensor&, const OptTensor&,
                            const OptTensor&, const OptTensor&)>();
  auto backward = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("cifarops::_shake_drop_backward", "")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, at::ArrayRef<double>,
                                        at::ArrayRef<double>, c10::string_view, c10::string_view, bool,
                                        const OptTensor&, const OptTensor&)>();

  // Two samples of two channels of one pixel; the shortcut has one channel.
  const at::Tensor h = torch::tensor({1.0f, 2.0f, 3.0f, 4.0f}).reshape({2, 2, 1, 1});
  const at::Tensor x = torch::tensor({10.0f, 20.0f}).reshape({2, 1, 1, 1});
  const at::Tensor gate = torch::tensor({1.0f, 0.0f});
  const at::Tensor alpha = torch::tensor({0.5f, -0.5f});
  const at::Tensor beta = torch::tensor({0.25f, 0.75f});
  const std::vector<double> alpha_range{-1.0, 1.0}, beta_range{0.0, 1.0};

  // Sample 0: gate 1, y = h + x; sample 1: gate 0, y = -0.5 h + x (first channel only).
  const auto [y, state] = shake_drop.call(h, x, 0.5, alpha_range, beta_range, "batch", "sample", true, gate, alpha,
                                          beta, std::nullopt);
  expect(at::equal(y, torch::tensor({11.0f, 2.0f, 18.5f, -2.0f}).reshape({2, 2, 1, 1})), "shake_drop forward");

  // grad_h: gate 1 -> grad; gate 0 -> beta * grad.
  const at::Tensor grad = torch::ones({2, 2, 1, 1});
  const at::Tensor dh = backward.call(grad, state, 0.5, alpha_range, beta_range, "batch", "sample", true, gate, beta);
  expect(at::equal(dh, torch::tensor({1.0f, 1.0f, 0.75f, 0.75f}).reshape({2, 2, 1, 1})), "shake_drop backward");

  // Noise from the CPU generator: the same seed, the same draw; the state returned replays it.
  torch::manual_seed(3);
  const auto [y1, s1] = shake_drop.call(h, std::nullopt, 0.5, alpha_range, beta_range, "batch", "pixel", true,
                                        std::nullopt, std::nullopt, std::nullopt, std::nullopt);
  const auto [y2, s2] = shake_drop.call(h, std::nullopt, 0.5, alpha_range, beta_range, "batch", "pixel", true,
                                        std::nullopt, std::nullopt, std::nullopt, s1);
  expect(at::equal(y1, y2) && at::equal(s1, s2), "shake_drop replays its RNG state");

  // A bad argument is an error naming it, not a crash.
  bool threw = false;
  try {
    shake_drop.call(h, x, 0.5, alpha_range, beta_range, "batch", "sample", true, torch::ones({3}), alpha, beta,
                    std::nullopt);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("gate must have shape") != std::string::npos;
  }
  expect(threw, "bad gate shape raises a named error");

  // Shake-Shake: y = x + alpha h1 + (1 - alpha) h2; backward (beta dy, (1 - beta) dy).
  auto shake_shake = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("cifarops::shake_shake", "")
                         .typed<std::tuple<at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view,
                             c10::string_view, c10::string_view, bool, const std::optional<at::Tensor>&,
                             const std::optional<at::Tensor>&, const std::optional<at::Tensor>&)>();
  auto shake_shake_backward = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("cifarops::_shake_shake_backward", "")
                                  .typed<std::tuple<at::Tensor, at::Tensor>(
                                      const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                      c10::string_view, c10::string_view)>();
  const at::Tensor h1 = torch::tensor({4.0f, 8.0f}).reshape({2, 1});
  const at::Tensor h2 = torch::tensor({0.0f, 4.0f}).reshape({2, 1});
  const auto [mix, mix_state] = shake_shake.call(h1, h2, h2, "shake", "shake", "sample", true,
                                             torch::tensor({0.25f, 0.5f}), torch::tensor({0.5f, 0.75f}), std::nullopt);
  expect(at::equal(mix, torch::tensor({1.0f, 10.0f}).reshape({2, 1})), "shake_shake forward");
  const auto [g1, g2] =
      shake_shake_backward.call(torch::ones({2, 1}), mix_state, torch::tensor({0.5f, 0.75f}), "shake", "sample");
  expect(at::equal(g1, torch::tensor({0.5f, 0.75f}).reshape({2, 1})) &&
             at::equal(g2, torch::tensor({0.5f, 0.25f}).reshape({2, 1})),
         "shake_shake backward");

  // Maxout, contiguous grouping of 2: (1, 5), (3, 2) -> (5, 3) with pieces (1, 0).
  auto maxout = c10::Dispatcher::singleton()
                    .findSchemaOrThrow("cifarops::maxout", "")
                    .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t, c10::string_view)>();
  const auto [m, index] = maxout.call(torch::tensor({1.0f, 5.0f, 3.0f, 2.0f}).reshape({1, 4}), 2, 1, "contiguous");
  expect(at::equal(m, torch::tensor({5.0f, 3.0f}).reshape({1, 2})) &&
             at::equal(index, torch::tensor({1, 0}, torch::kUInt8).reshape({1, 2})),
         "maxout forward");

  std::cout << (failures == 0 ? "all passed" : "FAILED") << "\n";
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
