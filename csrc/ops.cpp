// Every cifarops op schema, declared once. Kernels register per dispatch key in csrc/cpu and csrc/cuda;
// fake (meta) and autograd formulas are registered from python/cifarops/ops.
//
// Ops that draw take their noise from the device generator's Philox state inside the kernel (tagged
// nondeterministic_seeded, so that no compiler merges or reorders two calls) and return the state they used
// for their backward op; see csrc/include/cifarops/philox.h.
#include <torch/library.h>

TORCH_LIBRARY(cifarops, m) {
  // y = shortcut + (b + alpha - b * alpha) * h; backward scales grad_y by b + beta - b * beta (SPEC.md).
  // Training: b ~ Bernoulli(1 - p_drop) per batch or sample (gate_level), alpha ~ U[alpha_range] and
  // beta ~ U[beta_range] per batch, sample, channel or pixel (level), drawn in the kernel from the
  // generator's Philox state (streams 0, 1, 2), unless given: gate (1,) or (N,); alpha, beta (1,), (N,),
  // (N, C) or h's shape. Evaluation: y = shortcut + E[b + alpha - b * alpha] * h. A shortcut may have fewer
  // channels than h: the missing channels count as zeros (PyramidNet). rng_state: an explicit {seed, offset}
  // (int64, 2 elements) instead of the generator's; the second output is the state used (zeros if none).
  m.def(
      "shake_drop(Tensor h, Tensor? shortcut, float p_drop, float[] alpha_range, float[] beta_range, "
      "str gate_level, str level, bool training, Tensor? gate, Tensor? alpha, Tensor? beta, Tensor? rng_state) "
      "-> (Tensor, Tensor)",
      {at::Tag::nondeterministic_seeded});
  // grad_h = (b + beta - b * beta) * grad_y, with the forward's noise regenerated from its rng_state.
  m.def(
      "_shake_drop_backward(Tensor grad_y, Tensor rng_state, float p_drop, float[] alpha_range, float[] beta_range, "
      "str gate_level, str level, bool training, Tensor? gate, Tensor? beta) -> Tensor");

  // Stochastic depth: y = shortcut + b * s * h, b ~ Bernoulli(1 - p) per sample (mode "row") or per batch
  // ("batch") from the generator's Philox state (stream 0), unless given (gate: (1,) or (N,)); s = 1 / (1 - p)
  // with scale_by_keep (0 at p = 1), else 1 (Huang's form). Evaluation: y = shortcut + h scaled, else
  // shortcut + (1 - p) * h. Shortcut and rng_state as for shake_drop; the second output is the state used.
  m.def(
      "stochastic_depth(Tensor h, Tensor? shortcut, float p, str mode, bool scale_by_keep, bool training, "
      "Tensor? gate, Tensor? rng_state) -> (Tensor, Tensor)",
      {at::Tag::nondeterministic_seeded});
  // grad_h = b * s * grad_y, the gate regenerated from the forward's rng_state.
  m.def(
      "_stochastic_depth_backward(Tensor grad_y, Tensor rng_state, float p, str mode, bool scale_by_keep, "
      "bool training, Tensor? gate) -> Tensor");

  // Drop-Activation: y = m ? relu(x) : x with m ~ Bernoulli(keep) per element, drawn in the kernel from the
  // generator's Philox state (stream 0, the element's NCHW index) unless given (mask: bool, x's shape, True keeps
  // the ReLU); evaluation: the leaky ReLU of slope 1 - keep. Returns y and the state used (zeros if none).
  m.def("drop_activation(Tensor x, float keep, bool training, Tensor? mask, Tensor? rng_state) -> (Tensor, Tensor)",
        {at::Tag::nondeterministic_seeded});
  // The same in place (x becomes y); returns the state used. Its backward is _drop_activation_backward too.
  m.def("drop_activation_(Tensor(a!) x, float keep, bool training, Tensor? mask, Tensor? rng_state) -> Tensor",
        {at::Tag::nondeterministic_seeded});
  // grad_x from grad_y and the forward's output y (never x), the mask regenerated from rng_state.
  m.def(
      "_drop_activation_backward(Tensor grad_y, Tensor y, Tensor rng_state, float keep, bool training, "
      "Tensor? mask) -> Tensor");

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
  // the width (pseudorandom), or from boundaries (N, C, 2, L) int64 (a_0 = 0 .. a_out = in; Graham's only), or,
  // with neither, are drawn in the kernel from rng_state (explicit {seed, offset}, else the generator's):
  // sequence "pseudorandom" or "random", one draw per image (per_image) or per (image, channel); streams in
  // csrc/include/cifarops/fractional_max_pool2d.h. Returns y, each output's choice: int64 flat h * W + w
  // (return_indices, PyTorch's) or a uint8 offset inside its region, and the RNG state used (zeros when the
  // call drew nothing).
  m.def(
      "fractional_max_pool2d(Tensor x, int[] kernel_size, int[] output_size, str regions, Tensor? samples, "
      "Tensor? boundaries, bool return_indices, str sequence, bool per_image, Tensor? rng_state) "
      "-> (Tensor, Tensor, Tensor)",
      {at::Tag::nondeterministic_seeded});
  // grad_x: each input sums grad_y over the outputs that chose it (gathered, no atomics); the regions come
  // from the forward's draws (its rng_state output when it drew them).
  m.def(
      "_fractional_max_pool2d_backward(Tensor grad_y, Tensor index, SymInt[] input_size, int[] kernel_size, "
      "str regions, Tensor? samples, Tensor? boundaries, str sequence, bool per_image, Tensor? rng_state) -> Tensor");
  // values (input-shaped) at each output's choice, 0 outside its region: the gradient of the backward op
  // (double backward); pure PyTorch (python/cifarops/ops/fractional_max_pool2d.py).
  m.def(
      "_fractional_max_pool2d_select(Tensor values, Tensor index, int[] kernel_size, str regions, Tensor? samples, "
      "Tensor? boundaries, str sequence, bool per_image, Tensor? rng_state) -> Tensor");

  // Stochastic pooling (Zeiler & Fergus, arXiv 1301.3557) of (N, C, H, W) in training: k x k regions with stride,
  // padding and ceil mode as max_pool2d (padded positions weigh 0); each output draws one element of its region
  // with probability a_i / sum a (a = max(x, 0)) from u = the explicit uniforms (float32, y's shape) or
  // u(NCHW output index, stream 0) of rng_state (else the generator's). Returns y, each output's drawn offset
  // inside its window (uint8, 255 where the region sums to 0: y = 0, no gradient) and the state used (the
  // explicit one, else zeros when the call drew nothing). Formulas: csrc/include/cifarops/stochastic_pool2d.h.
  m.def(
      "stochastic_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, "
      "Tensor? uniforms, Tensor? rng_state) -> (Tensor, Tensor, Tensor)",
      {at::Tag::nondeterministic_seeded});
  // grad_x: each input sums grad_y over the outputs that drew it (gathered, no atomics).
  m.def(
      "_stochastic_pool2d_backward(Tensor grad_y, Tensor offset, SymInt[] input_size, int[2] kernel_size, "
      "int[2] stride, int[2] padding, bool ceil_mode) -> Tensor");
  // Evaluation: the probabilistic weighting sum a^2 / sum a of each region (0 where the sum is 0).
  m.def(
      "stochastic_pool2d_expectation(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode) "
      "-> Tensor");
  m.def(
      "_stochastic_pool2d_expectation_backward(Tensor grad_y, Tensor x, int[2] kernel_size, int[2] stride, "
      "int[2] padding, bool ceil_mode) -> Tensor");
}
