// Entry points of the CUDA kernels: plain structs in, a cudaError_t out. Declared here, torch-free,
// so that csrc/cuda/*.cu compile with nvcc alone and csrc/cuda/*_bind.cpp call them from torch.
#pragma once

#include <cuda_runtime_api.h>

#include "cifarops/fractional_max_pool2d.h"
#include "cifarops/maxout.h"
#include "cifarops/shake_drop.h"

namespace cifarops {

cudaError_t launch_shake_drop(const ShakeDropParams& params, cudaStream_t stream);
// Forward of every maxout mode; backward of Max / Sample (from the chosen pieces) and of Expectation.
cudaError_t launch_maxout_forward(const MaxoutParams& params, cudaStream_t stream);
cudaError_t launch_maxout_backward(const MaxoutParams& params, cudaStream_t stream);
cudaError_t launch_fractional_max_pool2d_forward(const FmpParams& params, cudaStream_t stream);
cudaError_t launch_fractional_max_pool2d_backward(const FmpParams& params, cudaStream_t stream);

}  // namespace cifarops
