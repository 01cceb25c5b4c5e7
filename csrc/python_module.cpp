// cifarops._C: importing it runs the static op registrations (csrc/ops.cpp, csrc/cpu, csrc/cuda).
// It also says what was compiled in, for cifarops.build_info() and the benchmark report, and gives each
// public op a direct Python entry (below).
#include <torch/extension.h>

#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <c10/util/SmallVector.h>

#include <cstring>
#include <string>
#include <tuple>
#include <utility>

#include "args/cpu_output_cache.h"
#include "args/rng.h"
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
// A vectorcall (METH_FASTCALL) function with positional arguments only, each converted by FromPy below: a
// wrong type is a TypeError naming the schema's argument, before the op runs. Like torch.ops it releases the
// GIL while the op runs, and C++ errors become torch's Python exceptions (HANDLE_TH_ERRORS).
template <typename T>
struct FromPy;

template <>
struct FromPy<const at::Tensor&> {
  static constexpr const char* kExpected = "a Tensor";
  const at::Tensor* value = nullptr;  // the Python object's own tensor: no reference count touched
  bool load(PyObject* o) {
    if (!THPVariable_Check(o)) return false;
    value = &THPVariable_Unpack(o);
    return true;
  }
  const at::Tensor& get() const { return *value; }
};

template <>
struct FromPy<at::Tensor&> {  // an in-place op's tensor (Tensor(a!)): the op writes it, through this reference
  static constexpr const char* kExpected = "a Tensor";
  at::Tensor* value = nullptr;
  bool load(PyObject* o) {
    if (!THPVariable_Check(o)) return false;
    value = const_cast<at::Tensor*>(&THPVariable_Unpack(o));
    return true;
  }
  at::Tensor& get() const { return *value; }
};

template <>
struct FromPy<const std::optional<at::Tensor>&> {
  static constexpr const char* kExpected = "a Tensor or None";
  std::optional<at::Tensor> value;
  bool load(PyObject* o) {
    if (o == Py_None) return true;
    if (!THPVariable_Check(o)) return false;
    value = THPVariable_Unpack(o);
    return true;
  }
  const std::optional<at::Tensor>& get() const { return value; }
};

inline bool is_int(PyObject* o) { return PyLong_Check(o) && !PyBool_Check(o); }

// numpy's bool scalar, which torch.ops takes for a bool (as it takes numpy's integers for an int).
inline bool is_numpy_bool(PyObject* o) {
  const char* name = Py_TYPE(o)->tp_name;
  return std::strcmp(name, "numpy.bool_") == 0 || std::strcmp(name, "numpy.bool") == 0;
}

template <>
struct FromPy<int64_t> {
  static constexpr const char* kExpected = "an int (in the int64 range)";
  int64_t value = 0;
  bool load(PyObject* o) {
    if (PyBool_Check(o) || is_numpy_bool(o)) return false;
    PyObject* number = is_int(o) ? (Py_INCREF(o), o) : (PyIndex_Check(o) ? PyNumber_Index(o) : nullptr);
    if (number == nullptr) {  // neither an int nor an integer with __index__ (numpy's)
      PyErr_Clear();
      return false;
    }
    int overflow = 0;
    value = PyLong_AsLongLongAndOverflow(number, &overflow);
    Py_DECREF(number);
    if (value == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    return overflow == 0;
  }
  int64_t get() const { return value; }
};

// A float, an int, or numpy's floating and integer scalars (as torch.ops takes them); never a bool.
inline bool load_double(PyObject* o, double& value) {
  if (PyFloat_Check(o)) {
    value = PyFloat_AS_DOUBLE(o);
    return true;
  }
  if (PyBool_Check(o) || is_numpy_bool(o)) return false;
  const bool numpy_float = std::strncmp(Py_TYPE(o)->tp_name, "numpy.float", 11) == 0;
  if (!is_int(o) && !numpy_float && !PyIndex_Check(o)) return false;
  value = is_int(o) ? PyLong_AsDouble(o) : PyFloat_AsDouble(o);  // PyFloat_AsDouble calls __float__ / __index__
  if (value == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  return true;
}

template <>
struct FromPy<double> {
  static constexpr const char* kExpected = "a float";
  double value = 0;
  bool load(PyObject* o) { return load_double(o, value); }
  double get() const { return value; }
};

template <>
struct FromPy<bool> {
  static constexpr const char* kExpected = "a bool";
  bool value = false;
  bool load(PyObject* o) {
    if (o == Py_True || o == Py_False) {
      value = o == Py_True;
      return true;
    }
    if (!is_numpy_bool(o)) return false;
    const int truth = PyObject_IsTrue(o);
    if (truth < 0) {
      PyErr_Clear();
      return false;
    }
    value = truth == 1;
    return true;
  }
  bool get() const { return value; }
};

template <>
struct FromPy<c10::string_view> {
  static constexpr const char* kExpected = "a str";
  c10::string_view value;
  bool load(PyObject* o) {
    if (!PyUnicode_Check(o)) return false;
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(o, &size);  // cached in the str object after the first call
    if (data == nullptr) {
      PyErr_Clear();
      return false;
    }
    value = c10::string_view(data, static_cast<size_t>(size));
    return true;
  }
  c10::string_view get() const { return value; }
};

// A list or tuple, element by element; inline storage for the short lists the ops take.
template <typename T>
struct FromPySequence {
  c10::SmallVector<T, 4> value;
  template <typename LoadOne>
  bool load_items(PyObject* o, LoadOne load_one) {
    if (!PyList_Check(o) && !PyTuple_Check(o)) return false;
    const Py_ssize_t size = PySequence_Fast_GET_SIZE(o);
    PyObject** items = PySequence_Fast_ITEMS(o);
    value.resize(size);
    for (Py_ssize_t i = 0; i < size; ++i) {
      if (!load_one(items[i], value[i])) return false;
    }
    return true;
  }
  at::ArrayRef<T> get() const { return value; }
};

template <>
struct FromPy<at::IntArrayRef> : FromPySequence<int64_t> {
  static constexpr const char* kExpected = "a list or tuple of ints";
  bool load(PyObject* o) {
    return load_items(o, [](PyObject* item, int64_t& v) {
      FromPy<int64_t> one;
      if (!one.load(item)) return false;
      v = one.get();
      return true;
    });
  }
};

template <>
struct FromPy<at::ArrayRef<double>> : FromPySequence<double> {
  static constexpr const char* kExpected = "a list or tuple of floats";
  bool load(PyObject* o) { return load_items(o, load_double); }
};

inline PyObject* to_py(at::Tensor t) { return THPVariable_Wrap(std::move(t)); }

template <typename Tuple, size_t... I>
PyObject* tuple_to_py(Tuple& values, std::index_sequence<I...>) {
  PyObject* tuple = PyTuple_New(sizeof...(I));
  if (tuple == nullptr) return nullptr;
  const bool ok = ([&] {
    PyObject* item = THPVariable_Wrap(std::move(std::get<I>(values)));
    if (item != nullptr) PyTuple_SET_ITEM(tuple, I, item);
    return item != nullptr;
  }() && ...);
  if (!ok) Py_CLEAR(tuple);  // frees the items already set
  return tuple;
}

template <typename... Ts>
PyObject* to_py(std::tuple<Ts...> values) {
  return tuple_to_py(values, std::index_sequence_for<Ts...>{});
}

// kFirstOnly: the entry <op>_output, which returns the first output alone (y): a functional that drops the
// others (the choices, the RNG state) then makes and frees no Python objects for them, about 1.5 µs a
// training call.
template <typename Sig, const c10::TypedOperatorHandle<Sig>& (*handle)(), bool kFirstOnly>
struct Entry;
template <typename R, typename... Args, const c10::TypedOperatorHandle<R(Args...)>& (*handle)(), bool kFirstOnly>
struct Entry<R(Args...), handle, kFirstOnly> {
  static PyObject* call(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
    HANDLE_TH_ERRORS
    const c10::FunctionSchema& schema = handle().schema();
    if (nargs != static_cast<Py_ssize_t>(sizeof...(Args))) {
      PyErr_Format(PyExc_TypeError, "cifarops._C.%s%s takes %zu positional arguments (%s), got %zd",
                   schema.name().c_str() + std::strlen("cifarops::"), kFirstOnly ? "_output" : "", sizeof...(Args),
                   schema_arguments(schema).c_str(), nargs);
      return nullptr;
    }
    return call_with(args, std::index_sequence_for<Args...>{});
    END_HANDLE_TH_ERRORS
  }

 private:
  static std::string schema_arguments(const c10::FunctionSchema& schema) {
    std::string names;
    for (const auto& argument : schema.arguments()) names += (names.empty() ? "" : ", ") + argument.name();
    return names;
  }

  template <size_t I, typename Holder>
  static bool load(Holder& holder, PyObject* const* args) {
    if (holder.load(args[I])) return true;
    const c10::FunctionSchema& schema = handle().schema();
    PyErr_Format(PyExc_TypeError, "cifarops._C.%s%s: argument %s must be %s, got %s",
                 schema.name().c_str() + std::strlen("cifarops::"), kFirstOnly ? "_output" : "",
                 schema.arguments()[I].name().c_str(), Holder::kExpected, Py_TYPE(args[I])->tp_name);
    return false;
  }

  template <size_t... I>
  static PyObject* call_with(PyObject* const* args, std::index_sequence<I...>) {
    std::tuple<FromPy<Args>...> holders;
    if (!(load<I>(std::get<I>(holders), args) && ...)) return nullptr;
    R result;
    {
      pybind11::gil_scoped_release no_gil;
      result = handle().call(std::get<I>(holders).get()...);
    }
    if constexpr (kFirstOnly) {
      return to_py(std::move(std::get<0>(result)));
    } else {
      return to_py(std::move(result));
    }
  }
};

template <typename Sig, const c10::TypedOperatorHandle<Sig>& (*handle)(), bool kFirstOnly = false>
PyMethodDef entry(const char* name) {
  return {name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&Entry<Sig, handle, kFirstOnly>::call)),
          METH_FASTCALL, nullptr};
}

// <op> returns what torch.ops.cifarops.<op>.default returns; <op>_output only its first output.
PyMethodDef kEntries[] = {
    entry<ShakeDropSig, &shake_drop_op>("shake_drop"),
    entry<ShakeDropSig, &shake_drop_op, true>("shake_drop_output"),
    entry<StochasticDepthSig, &stochastic_depth_op>("stochastic_depth"),
    entry<StochasticDepthSig, &stochastic_depth_op, true>("stochastic_depth_output"),
    entry<DropActivationSig, &drop_activation_op>("drop_activation"),
    entry<DropActivationSig, &drop_activation_op, true>("drop_activation_output"),
    entry<DropActivationInplaceSig, &drop_activation_inplace_op>("drop_activation_"),
    entry<ShakeShakeSig, &shake_shake_op>("shake_shake"),
    entry<ShakeShakeSig, &shake_shake_op, true>("shake_shake_output"),
    entry<MaxoutSig, &maxout_op>("maxout"),
    entry<MaxoutSig, &maxout_op, true>("maxout_output"),
    entry<ProbabilisticMaxoutSig, &probabilistic_maxout_op>("probabilistic_maxout"),
    entry<ProbabilisticMaxoutSig, &probabilistic_maxout_op, true>("probabilistic_maxout_output"),
    entry<ExpectationSig, &expectation_op>("probabilistic_maxout_expectation"),
    entry<FmpSig, &fmp_op>("fractional_max_pool2d"),
    entry<FmpSig, &fmp_op, true>("fractional_max_pool2d_output"),
    entry<StochasticPoolSig, &stochastic_pool_op>("stochastic_pool2d"),
    entry<StochasticPoolSig, &stochastic_pool_op, true>("stochastic_pool2d_output"),
    entry<StochasticPoolExpectationSig, &stochastic_pool_expectation_op>("stochastic_pool2d_expectation"),
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace
}  // namespace cifarops

PYBIND11_MODULE(_C, m) {
  m.doc() = "cifarops compiled kernels; importing this module registers the C++ and CUDA ops";
  m.def("build_info", &cifarops::build_info, "What this build of cifarops._C contains");
  m.def(
      "cpu_output_cache_info",
      [] {
        const cifarops::CpuOutputCacheInfo info = cifarops::cpu_output_cache_info();
        pybind11::dict out;
        out["cached_bytes"] = info.cached_bytes;
        out["limit_bytes"] = info.limit_bytes;
        out["hits"] = info.hits;
        out["misses"] = info.misses;
        return out;
      },
      "The CPU output cache: bytes kept, its limit, outputs served from it (hits) and not (misses)");
  m.def("empty_cpu_output_cache", &cifarops::empty_cpu_output_cache, "Frees the blocks the CPU output cache keeps");
  m.def("set_cpu_output_cache_limit", &cifarops::set_cpu_output_cache_limit, pybind11::arg("bytes"),
        "Sets how many bytes the CPU output cache may keep (0: none), evicting the oldest blocks beyond it");
  // Without the GIL, as the op entries: threads may draw at once, and the generator's mutex keeps them apart.
  m.def("draw_rng_state", &cifarops::draw_rng_state, pybind11::arg("device"), pybind11::arg("streams"),
        pybind11::call_guard<pybind11::gil_scoped_release>(),
        "The {seed, offset} state (int64, on device) of a call of `streams` streams, reserved under the generator's "
        "mutex; on CUDA unpacked on the device (no host sync, graph-safe)");
  if (PyModule_AddFunctions(m.ptr(), cifarops::kEntries) != 0) throw pybind11::error_already_set();
}
