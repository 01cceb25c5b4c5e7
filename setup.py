"""Builds cifarops._C with torch.utils.cpp_extension (ninja).

Always builds the CPU kernels. Adds the CUDA kernels when torch is a CUDA build and nvcc is found, or when
FORCE_CUDA=1. Install with `pip install --no-build-isolation .` so the build uses the torch already
installed and never downloads another one.
"""

import glob
import os

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as error:  # an isolated build environment has no torch
    raise RuntimeError(
        "cifarops builds against the torch already installed: install torch first, then "
        "`pip install --no-build-isolation .`"
    ) from error

VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def want_cuda():
    if os.environ.get("FORCE_CUDA") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    with_cuda = want_cuda()
    cpp = sources("csrc/ops.cpp") + sources("csrc/python_module.cpp") + sources("csrc/args/*.cpp") + sources("csrc/cpu/*.cpp")
    define = [("CIFAROPS_VERSION", f'"{VERSION}"')]
    cxx = ["-O3", "-fopenmp"]  # torch.utils.cpp_extension picks the C++ standard torch needs
    if not with_cuda:
        return CppExtension(
            "cifarops._C",
            cpp,
            include_dirs=[os.path.join(ROOT, "csrc/include"), os.path.join(ROOT, "csrc")],
            define_macros=define,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS  # no GPU to detect: the architectures we ship
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or ";".join(
        f"{major}.{minor}" for major, minor in {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    )
    define += [("CIFAROPS_WITH_CUDA", None), ("CIFAROPS_CUDA_ARCHS", f'"{archs}"')]
    return CUDAExtension(
        "cifarops._C",
        cpp + sources("csrc/cuda/*.cu"),
        include_dirs=[os.path.join(ROOT, "csrc/include"), os.path.join(ROOT, "csrc")],
        define_macros=define,
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
        extra_link_args=["-fopenmp"],
    )


setup(
    version=VERSION,
    package_dir={"cifarops": "python/cifarops", "cifarops.triton_kernels": "triton_kernels"},
    packages=["cifarops", "cifarops.ops", "cifarops.bench", "cifarops.models", "cifarops.train",
              "cifarops.triton_kernels"],
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
