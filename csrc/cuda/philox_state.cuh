// The RNG state of one CUDA call: the generator's PhiloxCudaState, as native dropout takes it. Under CUDA
// graph capture it holds pointers that each replay advances, so a captured call draws new noise per replay;
// the kernel unpacks it and writes the {seed, offset} it used for the backward op (csrc/args/rng.h).
#pragma once

#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>

#include <mutex>

#include "cifarops/philox.h"

namespace cifarops {

// What a kernel receives: an explicit state on the device (a backward op, a checkpoint replay), else the
// generator's Philox state; `out` gets the state used (nullptr: not wanted).
struct CudaRng {
  const int64_t* explicit_state = nullptr;
  at::PhiloxCudaState philox;
  int64_t* out = nullptr;
};

// Reserves 4 * streams of the generator's offset for a call on `device` (nothing when explicit or not drawing).
inline CudaRng cuda_rng(const at::Device& device, uint64_t streams, const int64_t* explicit_state, int64_t* out) {
  CudaRng rng;
  rng.explicit_state = explicit_state;
  rng.out = out;
  if (explicit_state == nullptr && streams > 0) {
    auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
        std::nullopt, at::cuda::detail::getDefaultCUDAGenerator(device.index()));
    std::lock_guard<std::mutex> lock(gen->mutex_);
    rng.philox = gen->philox_cuda_state(4 * streams);
  }
  return rng;
}

// In the kernel: the state this call uses. Thread 0 of block (0, 0, 0) also writes it out (only it, once).
__device__ inline PhiloxState resolve_rng(const CudaRng& rng) {
  PhiloxState s;
  if (rng.explicit_state != nullptr) {
    s.seed = static_cast<uint64_t>(rng.explicit_state[0]);
    s.offset = static_cast<uint64_t>(rng.explicit_state[1]);
  } else {
    const auto unpacked = at::cuda::philox::unpack(rng.philox);
    s.seed = std::get<0>(unpacked);
    s.offset = std::get<1>(unpacked);
  }
  if (rng.out != nullptr && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0 && threadIdx.x == 0) {
    rng.out[0] = static_cast<int64_t>(s.seed);
    rng.out[1] = static_cast<int64_t>(s.offset);
  }
  return s;
}

}  // namespace cifarops
