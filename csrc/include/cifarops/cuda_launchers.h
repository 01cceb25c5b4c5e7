// Entry points of the CUDA kernels: plain structs in, a cudaError_t out. Declared here, torch-free,
// so that csrc/cuda/*.cu compile with nvcc alone and csrc/cuda/*_bind.cpp call them from torch.
#pragma once

#include <cuda_runtime_api.h>

#include "cifarops/shake_shake.h"

namespace cifarops {

cudaError_t launch_shake_shake_forward(const ShakeShakeParams& params, cudaStream_t stream);
cudaError_t launch_shake_shake_backward(const ShakeShakeParams& params, cudaStream_t stream);

}  // namespace cifarops
