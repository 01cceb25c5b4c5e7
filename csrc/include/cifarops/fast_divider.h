// Division by a divisor fixed for a whole launch (a channel count, a plane's width), as a multiply-high, an add
// and a shift: ATen's IntDivider<unsigned int> (Granlund and Montgomery, "Division by invariant integers using
// multiplication", 1994). A 32-bit integer division has no instruction on a GPU: nvcc emits about 20 for each
// (a float reciprocal and two corrections), so the 32-bit index paths of the kernels that split a thread index
// into coordinates (maxout, FMP) spent most of their instructions there (the kernel report, issue 29 item 4).
// The divider is made once on the host (args/*.cpp), passed in the kernel's parameters, and exact for every
// numerator below 2^31: the kernels' 32-bit paths stay below that (their launchers check it). Torch-free and
// host-runnable: cpp_tests/kernel_grid_test.cpp checks it against `/` and `%`.
#pragma once

#include <stdint.h>

#include "cifarops/macros.h"

namespace cifarops {

struct FastDivider {
  uint32_t divisor = 1, magic = 1, shift = 0;  // the defaults divide by 1

  FastDivider() = default;
  // d in [1, 2^31 - 1]; any other value (a size only a 64-bit index path can hold, which never uses the divider)
  // gives the divider by 1.
  explicit FastDivider(int64_t d) {
    if (d < 1 || d > INT32_MAX) return;
    divisor = static_cast<uint32_t>(d);
    shift = divisor == 1 ? 0 : 32 - __builtin_clz(divisor - 1);  // ceil(log2 d) <= 31
    // magic = floor(2^32 (2^shift - d) / d) + 1 < 2^32, so that n / d = (mulhi(n, magic) + n) >> shift
    magic = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - divisor)) / divisor + 1);
  }

  // n / d for n < 2^31 (mulhi(n, magic) + n < 2^32: no carry is lost).
  CIFAROPS_INLINE uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t high = __umulhi(n, magic);
#else
    const uint32_t high = static_cast<uint32_t>((static_cast<uint64_t>(n) * magic) >> 32);
#endif
    return (high + n) >> shift;
  }

  // q = n / d and r = n % d.
  CIFAROPS_INLINE void divmod(uint32_t n, uint32_t& q, uint32_t& r) const {
    q = div(n);
    r = n - q * divisor;
  }
};

}  // namespace cifarops
