// Float arithmetic rounded once per operation, the same bits on every backend (SPEC.md, "Same decisions on every
// backend"): what decides *which* element or draw is computed with these. nvcc contracts a * b + c into one fused
// multiply-add, rounded once where the host rounds twice; __fmul_rn and __fadd_rn are never contracted. On the host
// plain operators suffice: the CPU kernels are built with -ffp-contract=off (setup.py, CMakeLists.txt), so no
// compiler fuses them there either (GCC contracts by default wherever the target has FMA: aarch64, -march=native).
// The Triton kernel that draws launches with enable_fp_fusion=False, and the reference computes op by op.
#pragma once

#include <stdint.h>
#include <string.h>

#include "cifarops/macros.h"

#if defined(__CUDACC__)
#include <math.h>
#else
#include <cmath>
#endif

namespace cifarops {

CIFAROPS_INLINE float rn_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

CIFAROPS_INLINE float rn_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

CIFAROPS_INLINE double rn_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

CIFAROPS_INLINE double rn_add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// exp(d) for d <= 0 (d = lambda (z - max z) of probabilistic maxout's draw), the same bits on every backend
// (python/cifarops/reference/maxout.py's draw_exp and triton_kernels/maxout.py's _draw_exp make the same operations):
// 2^t with t = d log2(e) rounded once, split into k = floor(t) and f = t - k (exact), 2^f by its Taylor series
// e^(f ln 2) to degree 8 in Horner form, times 2^k built from its bits: within 2e-7 of exp(d) for |d| < 1 and 4e-6
// (t's rounding) down to 2^-126. Below t = -126 the weight is 0, so no result is subnormal (flushing subnormals
// differs between compilers).
CIFAROPS_INLINE float draw_exp(float d) {
  float t = rn_mul(d, 0x1.715476p+0f);  // log2(e) in float32
  if (!(t > -126.0f)) return 0.0f;      // and -inf (and NaN)
  t = t < 0.0f ? t : 0.0f;              // d <= 0 by construction: at most 1
  const float k = floorf(t);
  const float f = rn_add(t, -k);
  // ln(2)^n / n! in float32, n = 8 down to 0
  constexpr float kTaylor[9] = {0x1.62c022p-20f, 0x1.ffcbfcp-17f, 0x1.430912p-13f, 0x1.5d87fep-10f, 0x1.3b2ab6p-7f,
                                0x1.c6b08ep-5f,  0x1.ebfbe0p-3f,  0x1.62e430p-1f,  0x1.0p+0f};
  float p = kTaylor[0];
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int n = 1; n < 9; ++n) p = rn_add(rn_mul(p, f), kTaylor[n]);
  const int32_t exponent = (static_cast<int32_t>(k) + 127) << 23;  // 2^k, k in [-126, 0]: a normal float
#if defined(__CUDA_ARCH__)
  const float scale = __int_as_float(exponent);
#else
  float scale;
  memcpy(&scale, &exponent, sizeof(scale));
#endif
  return rn_mul(p, scale);
}

}  // namespace cifarops
