"""Loads the compiled extension `cifarops._C`, whose import registers the C++/CUDA kernels.

A missing or broken extension is not an ImportError: cifarops warns once and runs on Triton or the
reference instead (see cifarops.backends).
"""

from __future__ import annotations

import warnings

try:
    from cifarops import _C  # noqa: F401  (the import runs TORCH_LIBRARY registrations)

    LOADED = True
    LOAD_ERROR: str | None = None
except Exception as error:  # ImportError, or an undefined symbol from a torch ABI mismatch
    _C = None
    LOADED = False
    LOAD_ERROR = f"{type(error).__name__}: {error}"
    warnings.warn(
        "cifarops: the compiled extension cifarops._C could not be loaded "
        f"({LOAD_ERROR}); using the Triton or reference backends instead. "
        "Reinstall with `pip install --no-build-isolation .` to build it.",
        RuntimeWarning,
        stacklevel=2,
    )


# Read once: code traced by torch.compile consults this dict, never the pybind function.
BUILD_INFO: dict = dict(_C.build_info(), loaded=True) if LOADED else {"loaded": False, "error": LOAD_ERROR, "cuda": False}


def entry(name: str):
    """The compiled op's direct Python entry (csrc/python_module.cpp), or None without the extension."""
    return getattr(_C, name, None) if LOADED else None


def build_info() -> dict:
    """What the compiled extension contains (version, CUDA, architectures, OpenMP, torch it was built on)."""
    return dict(BUILD_INFO)
