// Shared by the kernel grid test (cpp_tests/kernel_grid_test.cpp and one kernel_grid_<op>.cpp per op): the
// checks' bookkeeping, a host run of a launch grid, bitwise comparison and the paths an op's cases exercised.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <initializer_list>
#include <set>
#include <string>

#include "cifarops/cuda_elementwise.cuh"

namespace kernel_grid {

// One check: counted, and printed when it fails.
void expect(bool ok, const std::string& what);

// Every thread of every block of a one-dimensional grid of `blocks` blocks, one after another, as
// thread(block, thread_index, blocks) in the kernel's index type. The kernels' threads write disjoint elements,
// so the order does not matter (races are what this cannot show).
template <typename index_t, typename Thread>
void run_grid(unsigned blocks, Thread&& thread) {
  for (index_t block = 0; block < static_cast<index_t>(blocks); ++block) {
    for (index_t t = 0; t < static_cast<index_t>(cifarops::kElementwiseThreads); ++t) {
      thread(block, t, static_cast<index_t>(blocks));
    }
  }
}

// Whether a grid of `blocks` blocks has fewer threads than `items`: its threads go round the grid-stride loop.
inline bool strides(int64_t items, unsigned blocks) {
  return items > int64_t(blocks) * cifarops::kElementwiseThreads;
}

// Equal bit for bit (NaNs included), element by element whatever the layouts.
bool bits_equal(const at::Tensor& a, const at::Tensor& b);

// Fills t with a pattern no op writes (0xA5 bytes, -1 in int64 indices), so that an element the grid does not
// write shows.
void poison(const at::Tensor& t);

// The paths (instantiations, loops, layouts) an op's cases ran; `expect_all` checks each named one ran, so that
// the test cannot pass without exercising them.
class Paths {
 public:
  void saw(const std::string& path) { seen_.insert(path); }
  void expect_all(const std::string& op, std::initializer_list<const char*> paths) const;

 private:
  std::set<std::string> seen_;
};

// One per op (kernel_grid_<op>.cpp).
void shake_drop();
void drop_activation();
void shake_shake();
void maxout();
void fractional_max_pool2d();
void stochastic_pool2d();

}  // namespace kernel_grid
