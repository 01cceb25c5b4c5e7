// cifarops._C: importing it runs the static op registrations (csrc/ops.cpp, csrc/cpu, csrc/cuda).
// It also says what was compiled in, for cifarops.build_info() and the benchmark report.
#include <torch/extension.h>

#ifndef CIFAROPS_VERSION
#define CIFAROPS_VERSION "unknown"
#endif
#ifndef CIFAROPS_CUDA_ARCHS
#define CIFAROPS_CUDA_ARCHS ""
#endif

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

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "cifarops compiled kernels; importing this module registers the C++ and CUDA ops";
  m.def("build_info", &build_info, "What this build of cifarops._C contains");
}
