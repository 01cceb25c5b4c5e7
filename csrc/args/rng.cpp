// draw_rng_state (csrc/args/rng.h): the state a call will use, reserved on the generator of `device`.
#include "args/rng.h"

namespace cifarops {

at::Tensor draw_rng_state(const at::Device& device, int64_t streams) {
  TORCH_CHECK_VALUE(streams > 0, "cifarops: streams must be positive, got ", streams);
  if (device.is_cuda()) {
#ifdef CIFAROPS_WITH_CUDA
    return draw_cuda_rng_state(device, streams);
#else
    TORCH_CHECK(false, "cifarops: this build of cifarops._C has no CUDA kernels, so it cannot draw a state on ",
                device, " (cifarops.philox.draw_state draws it with torch's own RNG instead)");
#endif
  }
  TORCH_CHECK_VALUE(device.is_cpu(), "cifarops: no generator for ", device, " tensors");
  const PhiloxState s = draw_cpu_state();
  at::Tensor out = at::empty({2}, at::TensorOptions().dtype(at::kLong));
  out.data_ptr<int64_t>()[0] = static_cast<int64_t>(s.seed);
  out.data_ptr<int64_t>()[1] = static_cast<int64_t>(s.offset);
  return out;
}

}  // namespace cifarops
