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
