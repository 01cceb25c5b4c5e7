// Every difference between the torch versions cifarops builds against (pyproject.toml's range, proven by
// scripts/check_torch_versions.sh), chosen by torch's own version macros. Nothing else in csrc/ may test a
// torch version: an op's code is written once, against the names defined here.
#pragma once

#include <torch/csrc/autograd/function.h>
#include <torch/version.h>  // TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR

#include <memory>

#define CIFAROPS_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace cifarops {

// The owning pointer of an autograd node. torch 2.13 made Node a c10::intrusive_ptr_target (one allocation,
// the count inside the node); up to 2.12 a node is owned by std::shared_ptr and must be deleted through
// deleteNode, which unlinks a long chain of nodes without recursing (as torch's generated code does).
#if CIFAROPS_TORCH_AT_LEAST(2, 13)
template <typename NodeT>
using NodePtr = c10::intrusive_ptr<NodeT>;

template <typename NodeT>
NodePtr<NodeT> new_node() {
  return c10::make_intrusive<NodeT>();
}
#else
template <typename NodeT>
using NodePtr = std::shared_ptr<NodeT>;

template <typename NodeT>
NodePtr<NodeT> new_node() {
  return NodePtr<NodeT>(new NodeT(), torch::autograd::deleteNode);
}
#endif

}  // namespace cifarops
