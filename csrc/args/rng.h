// The RNG state of one call on the torch side: taken from torch's generator of the device, or given back
// explicitly (a checkpointed block's recomputation, a test). See PhiloxState in cifarops/philox.h.
//
// An op that draws returns its state as an int64 tensor {seed, offset} on the input's device, which its
// backward op takes (as FlashAttention's rng_state). On the CPU the state is drawn and written here; on CUDA
// the kernel unpacks the generator's PhiloxCudaState (graph-safe) and writes the tensor itself
// (csrc/cuda/philox_state.cuh).
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <mutex>
#include <optional>

#include "cifarops/philox.h"

namespace cifarops {

// An explicit state: an int64 tensor of two elements {seed, offset} on the input's device.
inline void check_rng_state(const at::Tensor& state, const at::Tensor& ref, const char* name, const char* op) {
  TORCH_CHECK_VALUE(state.device() == ref.device(), op, ": ", name, " is on ", state.device(),
                    " but the input is on ", ref.device());
  TORCH_CHECK_TYPE(state.scalar_type() == at::kLong, op, ": ", name, " must be an int64 tensor {seed, offset}, got ",
                   state.scalar_type());
  TORCH_CHECK_VALUE(state.numel() == 2, op, ": ", name, " must have two elements {seed, offset}, got ",
                    state.numel());
}

// One random64() of the CPU generator as the seed, offset 0 (python/cifarops/philox.py's draw_state reads
// the same value with random_ over the full int64 range).
inline PhiloxState draw_cpu_state() {
  auto* gen = at::check_generator<at::CPUGeneratorImpl>(at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return PhiloxState{gen->random64(), 0};
}

// A CPU call's state: the explicit one, else drawn when `draws` (else zeros: nothing random in the call).
inline PhiloxState cpu_state(const std::optional<at::Tensor>& explicit_state, bool draws) {
  if (explicit_state.has_value()) {
    const at::Tensor dense = explicit_state->contiguous();
    const int64_t* v = dense.data_ptr<int64_t>();
    return PhiloxState{static_cast<uint64_t>(v[0]), static_cast<uint64_t>(v[1])};
  }
  return draws ? draw_cpu_state() : PhiloxState{};
}

// The {seed, offset} tensor an op returns; on the CPU filled here, on CUDA by the kernel.
inline at::Tensor empty_state(const at::Tensor& ref) {
  return at::empty({2}, ref.options().dtype(at::kLong));
}

// What python/cifarops/philox.py's draw_state returns for an op (the Triton and reference backends) or for a
// checkpointed block's tape that will call an op of `streams` streams on `device`: the state the op would take,
// reserved atomically under the generator's mutex, with no host sync. CPU: one random64(), offset 0. CUDA:
// philox_cuda_state(4 * streams), unpacked on the device by a one-thread kernel (csrc/cuda/rng_state.cu), as
// the ops' own kernels unpack it, so it is CUDA-graph safe: a captured draw reads the offset each replay advances.
at::Tensor draw_rng_state(const at::Device& device, int64_t streams);
#ifdef CIFAROPS_WITH_CUDA
at::Tensor draw_cuda_rng_state(const at::Device& device, int64_t streams);
#endif

inline at::Tensor cpu_state_tensor(const at::Tensor& ref, PhiloxState s) {
  at::Tensor out = empty_state(ref);
  int64_t* v = out.data_ptr<int64_t>();
  v[0] = static_cast<int64_t>(s.seed);
  v[1] = static_cast<int64_t>(s.offset);
  return out;
}

}  // namespace cifarops
