"""Builds cifarops._C with torch.utils.cpp_extension (ninja).

Always builds the CPU kernels. Adds the CUDA kernels when torch is a CUDA build and an nvcc of the same CUDA
major version is found. The switch CIFAROPS_CUDA (or FORCE_CUDA, torchvision's name) overrides that: 0 builds
the CPU kernels only (the Triton backend still runs on a GPU), 1 insists on the CUDA kernels (an error where they
cannot be built, never a silent CPU-only build). A CUDA torch with an nvcc of another CUDA major version is an
error that names both ways out. Install
with `pip install --no-build-isolation .` so the build uses the torch already installed and never downloads
another one.
"""

import glob
import os
import re
import subprocess

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
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"  # PTX: a newer GPU (Blackwell) JIT-compiles the sm_90 code


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def nvcc_release(cuda_home):
    """The CUDA release ("13.0") of the nvcc under cuda_home, or None where there is none."""
    if cuda_home is None:
        return None
    try:
        text = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    found = re.search(r"release (\d+\.\d+)", text)
    return found.group(1) if found else None


def want_cuda(env, torch_cuda, nvcc, cuda_home=None):
    """Whether to build the CUDA kernels. The switch (CIFAROPS_CUDA, else FORCE_CUDA): 0 never, 1 always, or a clear
    error where they cannot be built (torch_cuda: torch's CUDA release or None; nvcc: the toolkit's or None).
    Unset: when torch is a CUDA build and nvcc is of the same major version; a mismatch raises, naming both ways
    out (torch's own build check refuses another major version anyway, later and less clearly)."""
    setting = ""
    for name in ("CIFAROPS_CUDA", "FORCE_CUDA"):
        setting = env.get(name, "")
        if setting and setting not in ("0", "1"):
            raise RuntimeError(f"{name} must be 0 (CPU kernels only) or 1 (CUDA kernels too), got {setting!r}")
        if setting:
            break
    if setting == "0":
        return False
    if setting == "1" and torch_cuda is None:
        raise RuntimeError(f"{name}=1 asks for the CUDA kernels, but this torch is a CPU build: install a CUDA build "
                           "of torch, or unset it")
    if setting == "1" and nvcc is None:
        raise RuntimeError(f"{name}=1 asks for the CUDA kernels, but there is no nvcc in CUDA_HOME ({cuda_home}): "
                           "install the CUDA toolkit or point CUDA_HOME at it")
    if torch_cuda is None or nvcc is None:
        return False
    if torch_cuda.split(".")[0] != nvcc.split(".")[0]:
        raise RuntimeError(
            f"torch is built with CUDA {torch_cuda} but the nvcc in {cuda_home} is CUDA {nvcc}, so cifarops' CUDA "
            f"kernels cannot be built against it. Either set CIFAROPS_CUDA=0 to build the CPU kernels only (the Triton "
            f"backend still runs on the GPU), or point CUDA_HOME at a CUDA {torch_cuda.split('.')[0]}.x toolkit."
        )
    return True


def extension():
    with_cuda = want_cuda(os.environ, torch.version.cuda, nvcc_release(CUDA_HOME), CUDA_HOME)
    cpp = sources("csrc/ops.cpp") + sources("csrc/python_module.cpp") + sources("csrc/args/*.cpp") + sources("csrc/cpu/*.cpp")
    define = [("CIFAROPS_VERSION", f'"{VERSION}"')]
    # torch.utils.cpp_extension picks the C++ standard torch needs. -ffp-contract=off: no fused multiply-adds, so
    # that each operation rounds once, as the reference's do (GCC fuses wherever the target has FMA: aarch64,
    # -march=native), and the draws decide alike everywhere (csrc/include/cifarops/rounding.h).
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off"]
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


if __name__ == "__main__":  # pip's build backend runs this file as __main__; tests import want_cuda alone
    setup(
        version=VERSION,
        package_dir={"cifarops": "python/cifarops", "cifarops.triton_kernels": "triton_kernels"},
        packages=["cifarops", "cifarops.ops", "cifarops.bench", "cifarops.models", "cifarops.reference",
                  "cifarops.train", "cifarops.triton_kernels"],
        ext_modules=[extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )
