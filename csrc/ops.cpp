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

  // y = shortcut + alpha * h1 + (1 - alpha) * h2. alpha, beta: (N,), one per sample (expanded for batch level);
  // beta is only saved for the backward pass. h2 and the shortcut have h1's shape.
  m.def("shake_shake(Tensor h1, Tensor h2, Tensor? shortcut, Tensor alpha, Tensor beta) -> Tensor");
  // (grad_h1, grad_h2) = (beta * grad_y, (1 - beta) * grad_y).
  m.def("_shake_shake_backward(Tensor grad_y, Tensor beta) -> (Tensor, Tensor)");

  // Maxout over `dim` with `pieces` pieces per group; grouping "contiguous" (pylearn2) or "strided" (Lua).
  // Returns y and the winning piece of each output as uint8 (first maximum; NaN propagates).
  m.def("maxout(Tensor x, int pieces, int dim, str grouping) -> (Tensor, Tensor)");
  // grad_x: each input gets grad_y of its group if it is the group's chosen piece, else 0.
  m.def("_maxout_backward(Tensor grad_y, Tensor index, int pieces, int dim, str grouping) -> Tensor");
  // Probabilistic maxout in training: y = z_i with i ~ softmax(z / temperature) per output element, drawn
  // inside the kernel with u = philox_uniform(rng_state, logical output index, stream 0); rng_state: the
  // explicit {seed, offset} (int64 (2,) on x's device), or None for the generator's. Returns y, i (uint8)
  // and the state used. Its backward is _maxout_backward (the drawn piece needs no noise again).
  m.def(
      "probabilistic_maxout(Tensor x, int pieces, int dim, str grouping, float temperature, Tensor? rng_state) "
      "-> (Tensor, Tensor, Tensor)",
      {at::Tag::nondeterministic_seeded});
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
