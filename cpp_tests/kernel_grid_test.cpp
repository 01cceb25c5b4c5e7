// Runs the CUDA kernels' whole launch grids on the host (issue 18, item 1): every thread of every block, as the
// op's launcher sizes the grid (<op>_launch in csrc/include/cifarops/<op>.h), through the instantiation it would
// launch (<op>_dispatch), and compares with the CPU op through the dispatcher, bit for bit. Launch geometry,
// packet alignment, tails and the grid-stride loops go wrong here first. Each kernel body is a host/device
// function of its grid coordinates, of which the __global__ kernel is a thin wrapper; one file per op:
//   kernel_grid_shake_drop.cpp (and stochastic depth), kernel_grid_drop_activation.cpp, kernel_grid_shake_shake.cpp, kernel_grid_maxout.cpp (maxout, probabilistic
//   maxout and its expectation), kernel_grid_fmp.cpp (fractional max-pooling and its boundary-table kernel),
//   kernel_grid_stochastic_pool2d.cpp (stochastic pooling's draw, expectation and both backwards),
// each over every dtype, every instantiation the launcher picks (packets or scalars, layouts, the 64-bit-index
// one that the launcher takes only past 2^31 elements), tails, channels_last, both directions, and the
// grid-stride loops (grids the launcher caps, and grids forced smaller than the work), and each checks that
// every path it names ran. What it cannot show: races (the threads run one after another) and the CUDA side
// of the RNG state (resolve_rng; the state comes from the same explicit tensor here).
#include "kernel_grid.h"

#include <chrono>
#include <random>
#include <vector>

#include "cifarops/fast_divider.h"
#include <cstdlib>
#include <cstring>
#include <iostream>

namespace kernel_grid {
namespace {

int failures = 0, checks = 0;

// The integer type of a floating dtype's size.
at::ScalarType bits_type(at::ScalarType type) {
  switch (at::elementSize(type)) {
    case 1: return at::kByte;
    case 2: return at::kShort;
    case 4: return at::kInt;
    default: return at::kLong;
  }
}

}  // namespace

void expect(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    std::cout << "FAIL " << what << "\n";
    ++failures;
  }
}

bool bits_equal(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  return at::equal(a.view(bits_type(a.scalar_type())), b.view(bits_type(b.scalar_type())));
}

void poison(const at::Tensor& t) {
  if (t.scalar_type() == at::kLong) {
    t.fill_(-1);
    return;
  }
  int64_t pattern = 0;
  std::memset(&pattern, 0xA5, at::elementSize(t.scalar_type()));
  const at::Tensor bits = t.view(bits_type(t.scalar_type()));
  switch (bits.scalar_type()) {  // the pattern as the signed value of those bytes
    case at::kByte: bits.fill_(static_cast<int64_t>(static_cast<uint8_t>(pattern))); break;
    case at::kShort: bits.fill_(static_cast<int64_t>(static_cast<int16_t>(pattern))); break;
    case at::kInt: bits.fill_(static_cast<int64_t>(static_cast<int32_t>(pattern))); break;
    default: bits.fill_(pattern);
  }
}

void Paths::expect_all(const std::string& op, std::initializer_list<const char*> paths) const {
  for (const char* path : paths) expect(seen_.count(path) > 0, op + ": the cases ran " + path);
}

// The dividers of the 32-bit index paths (cifarops/fast_divider.h) against `/` and `%`: every divisor up to 4096,
// those next to each power of two and INT32_MAX, each over the numerators next to its multiples, 0 .. 300,
// those next to 2^31 and random ones below 2^31. One check per divisor.
void fast_divider() {
  std::vector<int64_t> divisors;
  for (int64_t d = 1; d <= 4096; ++d) divisors.push_back(d);
  for (int k = 12; k <= 31; ++k) {
    for (int64_t delta : {-1, 0, 1}) {
      const int64_t d = (int64_t(1) << k) + delta;
      if (d <= INT32_MAX) divisors.push_back(d);
    }
  }
  std::mt19937 random(7);
  for (int k = 0; k < 200; ++k) divisors.push_back(1 + random() % INT32_MAX);
  for (const int64_t d : divisors) {
    const cifarops::FastDivider divider(d);
    std::vector<uint32_t> numerators;
    for (uint32_t n = 0; n <= 300; ++n) numerators.push_back(n);
    for (const int64_t multiple : {int64_t(1), int64_t(2), int64_t(3), (int64_t(INT32_MAX) / d), (int64_t(INT32_MAX) / d) / 2}) {
      for (int64_t delta : {-1, 0, 1}) {
        const int64_t n = multiple * d + delta;
        if (n >= 0 && n <= INT32_MAX) numerators.push_back(static_cast<uint32_t>(n));
      }
    }
    for (uint32_t n : {uint32_t(INT32_MAX), uint32_t(INT32_MAX - 1)}) numerators.push_back(n);
    for (int k = 0; k < 200; ++k) numerators.push_back(random() % (uint32_t(INT32_MAX) + 1));
    bool ok = true;
    for (const uint32_t n : numerators) {
      uint32_t q, r;
      divider.divmod(n, q, r);
      ok = ok && q == n / static_cast<uint32_t>(d) && r == n % static_cast<uint32_t>(d);
    }
    expect(ok, "FastDivider(" + std::to_string(d) + ") divides every numerator below 2^31 as / and %");
  }
  const cifarops::FastDivider unused(int64_t(1) << 32);  // a size only the 64-bit path holds: the divider by 1
  expect(unused.div(12345) == 12345, "FastDivider of 2^32 is the divider by 1");
}

}  // namespace kernel_grid

int main() {
  at::manual_seed(0);
  const std::pair<const char*, void (*)()> ops[] = {{"fast_divider", kernel_grid::fast_divider},
                                                    {"shake_drop", kernel_grid::shake_drop},
                                                    {"drop_activation", kernel_grid::drop_activation},
                                                    {"shake_shake", kernel_grid::shake_shake},
                                                    {"maxout", kernel_grid::maxout},
                                                    {"fractional_max_pool2d", kernel_grid::fractional_max_pool2d},
                                                    {"stochastic_pool2d", kernel_grid::stochastic_pool2d}};
  for (const auto& [name, run] : ops) {
    const int checks = kernel_grid::checks, failures = kernel_grid::failures;
    const auto start = std::chrono::steady_clock::now();
    run();
    const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
    std::cout << name << ": " << (kernel_grid::checks - checks) - (kernel_grid::failures - failures) << " of "
              << kernel_grid::checks - checks << " checks passed (" << seconds.count() << " s)\n";
  }
  std::cout << kernel_grid::checks - kernel_grid::failures << " of " << kernel_grid::checks << " checks passed\n";
  return kernel_grid::failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
