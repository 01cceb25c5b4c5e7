// The autograd nodes of the fused residual ops, y = shortcut + g * h with g a function of saved noise (ShakeDrop,
// stochastic depth): the gradient to h is the op's backward op applied to grad_y, the gradient to the shortcut
// grad_y itself. `Saved` holds what the backward op needs (never h, the shortcut or the output) and provides
// release(), backward(grad) and the two node names, kNode and kBackwardNode.
#pragma once

#include <optional>

#include "args/autograd.h"

namespace cifarops {

// The node of a training call; its next edges are h and the shortcut.
template <typename Saved>
struct ResidualBackward final : torch::autograd::Node {
  Saved noise;
  bool has_shortcut = false, narrower = false;
  c10::SymInt shortcut_channels;  // a SymInt: under torch.compile with a dynamic batch, sizes are symbolic

  std::string name() const override { return Saved::kNode; }
  void release_variables() override { noise.release(); }

  void set_shortcut(const at::Tensor& h, const std::optional<at::Tensor>& shortcut) {
    if (!shortcut.has_value()) return;
    has_shortcut = true;
    shortcut_channels = shortcut->sym_size(1);
    narrower = shortcut_channels != h.sym_size(1);
  }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    torch::autograd::variable_list result(2);
    const at::Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return result;
    if (task_should_compute_output(0)) result[0] = noise.backward(grad_y);
    if (has_shortcut && task_should_compute_output(1)) {
      // dL/dx = dL/dy: the incoming gradient itself (a view when the shortcut is narrower), no copy.
      result[1] = narrower ? grad_y.narrow_symint(1, 0, shortcut_channels) : grad_y;
    }
    return result;
  }
};

// The backward op is linear in grad_y with the same coefficients: its own gradient is itself.
template <typename Saved>
struct ResidualBackwardBackward final : torch::autograd::Node {
  Saved noise;

  std::string name() const override { return Saved::kBackwardNode; }
  void release_variables() override { noise.release(); }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    torch::autograd::variable_list result(1);
    if (grads[0].defined() && task_should_compute_output(0)) result[0] = noise.backward(grads[0]);
    return result;
  }
};

}  // namespace cifarops
