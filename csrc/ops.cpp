// Every cifarops op schema, declared once. Kernels register per dispatch key in csrc/cpu and csrc/cuda;
// fake (meta) and autograd formulas are registered from python/cifarops/ops.
//
// Noise is always an input: gate/alpha/beta tensors, or a Philox `seed` tensor (int64, one element, on
// the input's device) when a coefficient is None. The kernels themselves draw nothing.
#include <torch/library.h>

TORCH_LIBRARY(cifarops, m) {
  // y = shortcut + (gate + alpha - gate * alpha) * h. gate: (N,); alpha, beta: (N, C), h's shape, or None
  // for per-element Philox noise in alpha_range / beta_range. beta is only saved for the backward pass.
  // A shortcut may have fewer channels than h: the missing channels count as zeros (PyramidNet).
  m.def(
      "shake_drop(Tensor h, Tensor? shortcut, Tensor gate, Tensor? alpha, Tensor? beta, Tensor? seed, "
      "float[] alpha_range, float[] beta_range) -> Tensor");
  // grad_h = (gate + beta - gate * beta) * grad_y.
  m.def("_shake_drop_backward(Tensor grad_y, Tensor gate, Tensor? beta, Tensor? seed, float[] beta_range) -> Tensor");

  // y = shortcut + alpha * h1 + (1 - alpha) * h2, alpha and beta drawn in the kernel from rng_state (else from
  // the device's generator): alpha = u(i, stream 0) for forward_mode "shake" (0.5 for "even"), beta = u(i,
  // stream 1) for backward_mode "shake" (0.5 for "even", alpha for "keep"), i = n at level "sample", 0 at
  // "batch"; evaluation (training=False) mixes with 0.5. Explicit alpha / beta: (1,) or (N,), any floating
  // dtype. Returns y and the RNG state {seed, offset} used (zeros when nothing is drawn).
  m.def(
      "shake_shake(Tensor h1, Tensor h2, Tensor? shortcut, str forward_mode, str backward_mode, str level, "
      "bool training, Tensor? alpha, Tensor? beta, Tensor? rng_state) -> (Tensor, Tensor)",
      {at::Tag::nondeterministic_seeded});
  // (grad_h1, grad_h2) = (beta * grad_y, (1 - beta) * grad_y) in one pass; beta explicit, else recomputed from
  // rng_state: backward_mode "shake" (stream 1), "keep" (the forward's drawn alpha, stream 0) or "even" (0.5).
  m.def(
      "_shake_shake_backward(Tensor grad_y, Tensor rng_state, Tensor? beta, str backward_mode, str level) "
      "-> (Tensor, Tensor)");

  // Maxout over `dim` with `pieces` pieces per group; grouping "contiguous" (pylearn2) or "strided" (Lua).
  // Returns y and the winning piece of each output as uint8 (first maximum; NaN propagates).
  m.def("maxout(Tensor x, int pieces, int dim, str grouping) -> (Tensor, Tensor)");
  // grad_x: each input gets grad_y of its group if it is the group's chosen piece, else 0.
  m.def("_maxout_backward(Tensor grad_y, Tensor index, int pieces, int dim, str grouping) -> Tensor");
  // Probabilistic maxout in training: y = z_i with i ~ softmax(z / temperature) per output element, drawn
  // from Philox(seed); returns y and i (uint8). Its backward is _maxout_backward.
  m.def(
      "probabilistic_maxout(Tensor x, int pieces, int dim, str grouping, float temperature, Tensor seed) "
      "-> (Tensor, Tensor)");
  // Probabilistic maxout at test time: y = sum_i softmax(z / temperature)_i z_i.
  m.def("probabilistic_maxout_expectation(Tensor x, int pieces, int dim, str grouping, float temperature) -> Tensor");
  m.def(
      "_probabilistic_maxout_expectation_backward(Tensor grad_y, Tensor x, int pieces, int dim, str grouping, "
      "float temperature) -> Tensor");

  // Fractional max-pooling (Graham, arXiv 1412.6071) of (N, C, H, W) to output_size = [h, w]. regions:
  // "window" (PyTorch's k x k windows, kernel_size = [kh, kw]) or Graham's "disjoint" / "overlapping"
  // (kernel_size = []). The sequences come from samples (N, C, 2) in x's dtype, u in [0, 1) with index 0 for
  // the width (pseudorandom), or from boundaries (N, C, 2, L) int64 (a_0 = 0 .. a_out = in; Graham's only).
  // Returns y and each output's choice: int64 flat h * W + w (return_indices, PyTorch's) or a uint8 offset
  // inside its region.
  m.def(
      "fractional_max_pool2d(Tensor x, int[] kernel_size, int[] output_size, str regions, Tensor? samples, "
      "Tensor? boundaries, bool return_indices) -> (Tensor, Tensor)");
  // grad_x: each input sums grad_y over the outputs that chose it (gathered, no atomics).
  m.def(
      "_fractional_max_pool2d_backward(Tensor grad_y, Tensor index, int[] input_size, int[] kernel_size, "
      "str regions, Tensor? samples, Tensor? boundaries) -> Tensor");
}
