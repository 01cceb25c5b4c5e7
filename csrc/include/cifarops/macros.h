// Torch-free macros shared by the CPU (C++) and CUDA (nvcc) sides of cifarops.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define CIFAROPS_HOST_DEVICE __host__ __device__
#define CIFAROPS_RESTRICT __restrict__
#else
#define CIFAROPS_HOST_DEVICE
#define CIFAROPS_RESTRICT __restrict
#endif

#define CIFAROPS_INLINE CIFAROPS_HOST_DEVICE inline

// A check of values only the device can read without a sync (explicit draws in device memory). On the device it
// is ATen's CUDA_KERNEL_ASSERT_MSG: the kernel stops with `message`, and the next synchronising call raises
// "device-side assert triggered" (as an out-of-range index does in torch.gather), asynchronously, at no cost
// while the values are good. In host code (the kernel grid test running a launch grid on the host) it throws
// std::invalid_argument(message). The CPU kernels never use it: the CPU ops read the values before launching.
#if defined(__CUDA_ARCH__)
#include <assert.h>
#define CIFAROPS_KERNEL_CHECK(cond, message)                                           \
  do {                                                                                 \
    if (!(cond)) __assert_fail(message, __FILE__, static_cast<unsigned>(__LINE__), __func__); \
  } while (0)
#else
#include <stdexcept>
#define CIFAROPS_KERNEL_CHECK(cond, message)            \
  do {                                                  \
    if (!(cond)) throw std::invalid_argument(message); \
  } while (0)
#endif
