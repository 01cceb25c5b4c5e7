// cifarops._C: importing it runs the static op registrations (csrc/ops.cpp, csrc/cpu, csrc/cuda).
// It also says what was compiled in, for cifarops.build_info() and the benchmark report, and gives each
// public op a direct Python entry (below).
#include <torch/extension.h>

#include <string_view>
#include <vector>

#include "args/signatures.h"

#ifndef CIFAROPS_VERSION
#define CIFAROPS_VERSION "unknown"
#endif
#ifndef CIFAROPS_CUDA_ARCHS
#define CIFAROPS_CUDA_ARCHS ""
#endif

namespace cifarops {
namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = CIFAROPS_VERSION;
#ifdef CIFAROPS_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["cuda_archs"] = CIFAROPS_CUDA_ARCHS;
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["torch"] = TORCH_VERSION;
  return info;
}

// The direct Python entry of an op: the same dispatcher call as torch.ops.cifarops.<op>.default (every
// dispatch key, mode and profiler sees it), without torch.ops' generic per-argument conversion through the
// schema, which costs a tiny CIFAR-sized call several microseconds (issue 16). The Python layer uses it only
// where torch.ops adds nothing: eager mode, plain tensors, no torch-function mode (cifarops.backends.fast_op).
// Like torch.ops it releases the GIL while the op runs.
template <typename T>
struct PyArg {
  using type = T;
};
template <>
struct PyArg<at::ArrayRef<double>> {
  using type = std::vector<double>;
};
template <>
struct PyArg<at::IntArrayRef> {
  using type = std::vector<int64_t>;
};
template <>
struct PyArg<c10::string_view> {
  using type = std::string_view;
};

template <typename Sig>
struct Entry;
template <typename R, typename... Args>
struct Entry<R(Args...)> {
  template <const c10::TypedOperatorHandle<R(Args...)>& (*handle)()>
  static R call(typename PyArg<Args>::type... args) {
    return handle().call(args...);
  }
};

}  // namespace
}  // namespace cifarops

PYBIND11_MODULE(_C, m) {
  m.doc() = "cifarops compiled kernels; importing this module registers the C++ and CUDA ops";
  m.def("build_info", &cifarops::build_info, "What this build of cifarops._C contains");
  using cifarops::Entry;
  using release_gil = pybind11::call_guard<pybind11::gil_scoped_release>;
  m.def("shake_drop", &Entry<cifarops::ShakeDropSig>::call<&cifarops::shake_drop_op>, release_gil());
  m.def("shake_shake", &Entry<cifarops::ShakeShakeSig>::call<&cifarops::shake_shake_op>, release_gil());
  m.def("maxout", &Entry<cifarops::MaxoutSig>::call<&cifarops::maxout_op>, release_gil());
  m.def("probabilistic_maxout", &Entry<cifarops::ProbabilisticMaxoutSig>::call<&cifarops::probabilistic_maxout_op>,
        release_gil());
  m.def("probabilistic_maxout_expectation", &Entry<cifarops::ExpectationSig>::call<&cifarops::expectation_op>,
        release_gil());
  m.def("fractional_max_pool2d", &Entry<cifarops::FmpSig>::call<&cifarops::fmp_op>, release_gil());
}
