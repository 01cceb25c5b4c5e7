// The autograd side shared by every op's Autograd-key kernel (csrc/args/<op>.cpp).
//
// A training call records one plain autograd Node, as torch's own generated ops do, with its hyper-parameters
// in typed fields. torch::autograd::Function would do the same work generically, per argument (twelve for
// ShakeDrop) and through a string-keyed map of saved values; on a CIFAR-sized tensor that bookkeeping cost more
// host time than the kernel, and the host time of a call is what decides whether a GPU waits (issue 16).
#pragma once

#include <torch/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <optional>

#include "args/torch_compat.h"

namespace cifarops {

inline bool requires_grad(const at::Tensor& t) { return t.requires_grad(); }
inline bool requires_grad(const std::optional<at::Tensor>& t) { return t.has_value() && t->requires_grad(); }
inline bool has_tangent(const at::Tensor& t) { return t._fw_grad(/*level=*/0).defined(); }
inline bool has_tangent(const std::optional<at::Tensor>& t) { return t.has_value() && has_tangent(*t); }

// Whether a call with these differentiable inputs builds a node: grad mode is on and one of them requires grad.
// Forward-mode AD has no formula here: a tangent on an input is an error naming the op, not a silent zero.
template <typename... Inputs>
bool records_grad(const char* op, const Inputs&... inputs) {
  TORCH_CHECK_NOT_IMPLEMENTED(!(has_tangent(inputs) || ...), op, ": forward-mode AD (a tangent on an input) is not "
                              "supported; use backward mode");
  return at::GradMode::is_enabled() && (requires_grad(inputs) || ...);
}

// A node of type NodeT whose next edges are the differentiable inputs (an absent one: an empty edge).
template <typename NodeT, typename... Inputs>
NodePtr<NodeT> make_node(const Inputs&... inputs) {
  auto node = new_node<NodeT>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  return node;
}

// The outputs the node differentiates, in its input order (the others, indices and states, carry no gradient).
template <typename... Outputs>
void set_history(const NodePtr<torch::autograd::Node>& node, Outputs&... outputs) {
  (torch::autograd::set_history(outputs, node), ...);
}

// A saved variable that may never have been set (an absent explicit draw): unset unpacks to nullopt. One that
// was set and released (a backward that did not retain the graph) raises torch's own second-backward error.
inline std::optional<at::Tensor> unpack_optional(const torch::autograd::SavedVariable& saved) {
  at::Tensor t = saved.unpack();
  return t.defined() ? std::optional<at::Tensor>(std::move(t)) : std::nullopt;
}

// Plain backward (no create_graph) runs the backward op below autograd: its own node would only record what
// nobody differentiates. With create_graph it goes through the op's Autograd kernel (double backward). Unpack
// the saved variables before making one: an unpack hook (a checkpoint's recomputation) records a graph.
struct BackwardGuard {
  BackwardGuard() {
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
  }
  std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
};

}  // namespace cifarops
