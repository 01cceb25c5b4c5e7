// Torch side of ShakeDrop, shared by every compiled backend: checks the op's arguments before anything is
// drawn (each error names the argument), brings the tensors into one dense memory format, allocates the
// outputs and fills the torch-free ShakeDropParams that the CPU loop and the CUDA kernel read. The autograd
// kernel (csrc/args/shake_drop.cpp) calls the forward and backward ops through the dispatcher.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "args/common.h"
#include "cifarops/shake_drop.h"

namespace cifarops {

struct ShakeDropCall {
  at::Tensor out;                        // what the op returns; kernels write params.out, which points into it
  at::Tensor state;                      // the {seed, offset} output (forward) or input (backward)
  std::optional<at::Tensor> state_in;    // an explicit state to use instead of the generator's
  bool draws = false;                    // some noise is drawn from Philox
  uint32_t streams = kShakeDropStreams;  // Philox streams a drawing call reserves (stochastic depth: 1)
  ShakeDropParams params;
  KeepAlive keep_alive;    // dense copies the params point into
};

// shake_drop: out = shortcut + (gate + alpha - gate * alpha) * h. The caller sets params.rng (CPU) or passes
// state_in / the generator's state to the kernel (CUDA), and fills call.state.
ShakeDropCall shake_drop_forward_call(const at::Tensor& h, const std::optional<at::Tensor>& shortcut, double p_drop,
                                      at::ArrayRef<double> alpha_range, at::ArrayRef<double> beta_range,
                                      c10::string_view gate_level, c10::string_view level, bool training,
                                      const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& alpha,
                                      const std::optional<at::Tensor>& beta, const std::optional<at::Tensor>& rng_state);

// _shake_drop_backward: grad_h = (gate + beta - gate * beta) * grad_y, the noise regenerated from rng_state.
ShakeDropCall shake_drop_backward_call(const at::Tensor& grad_y, const at::Tensor& rng_state, double p_drop,
                                       at::ArrayRef<double> alpha_range, at::ArrayRef<double> beta_range,
                                       c10::string_view gate_level, c10::string_view level, bool training,
                                       const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& beta);

// The parts stochastic depth (csrc/args/stochastic_depth.cpp) shares: h made dense in `format` with its output
// allocated; the shortcut's checks (errors name `op`) and its dense copy; an explicit (1,) or (N,) gate.
ShakeDropCall shake_drop_start_call(const at::Tensor& h, at::MemoryFormat format);
void check_shortcut(const at::Tensor& h, const std::optional<at::Tensor>& shortcut, const char* op);
void set_shortcut(ShakeDropCall& call, const std::optional<at::Tensor>& shortcut, at::MemoryFormat format);
void set_explicit_gate(ShakeDropCall& call, const at::Tensor& h, const at::Tensor& gate, const char* h_name,
                       const char* op);

// The pass itself, for either op: csrc/cpu/shake_drop.cpp and csrc/cuda/shake_drop.cu (`ref`: the tensor whose
// device runs it and gets the state).
void shake_drop_run_cpu(ShakeDropCall& call);
void shake_drop_run_cuda(ShakeDropCall& call, const at::Tensor& ref);

}  // namespace cifarops
