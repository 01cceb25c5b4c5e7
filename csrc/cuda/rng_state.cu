// The RNG state of a call drawn for the Python side (csrc/args/rng.h, draw_rng_state): the CUDA generator's
// Philox state reserved under its mutex and unpacked on the device, never read back to the host.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "args/rng.h"
#include "philox_state.cuh"

namespace cifarops {
namespace {

__global__ void unpack_rng_state_kernel(CudaRng rng) { resolve_rng(rng); }  // one thread writes rng.out

}  // namespace

at::Tensor draw_cuda_rng_state(const at::Device& device, int64_t streams) {
  TORCH_CHECK_VALUE(streams > 0, "cifarops: streams must be positive, got ", streams);
  const c10::cuda::CUDAGuard guard(device);
  const at::Device on(at::kCUDA, c10::cuda::current_device());  // the guard resolved an index-less device
  at::Tensor out = at::empty({2}, at::TensorOptions().device(on).dtype(at::kLong));
  const CudaRng rng = cuda_rng(on, static_cast<uint64_t>(streams), nullptr, out.data_ptr<int64_t>());
  unpack_rng_state_kernel<<<1, 1, 0, at::cuda::getCurrentCUDAStream()>>>(rng);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace cifarops
