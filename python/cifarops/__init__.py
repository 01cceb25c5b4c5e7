"""cifarops: fused CUDA, Triton and C++ kernels for the regularised CNN layers of the best CIFAR results.

Public API: layers (``ShakeDrop``, ``ShakeShake``, ``Maxout``, ``ProbabilisticMaxout``), ``cifarops.functional``, backend control (``available_backends``,
``use_backend``, ``select_backend``) and ``build_info``.
"""

from cifarops import ops  # noqa: F401  (registers fake kernels, autograd formulas and Triton ops)
from cifarops._extension import build_info
from cifarops.backends import BACKENDS, available_backends, default_backend, select_backend, use_backend
from cifarops.functional import shake_drop_schedule
from cifarops.modules import Maxout, ProbabilisticMaxout, ShakeDrop, ShakeShake
from cifarops import functional  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "Maxout",
    "ProbabilisticMaxout",
    "ShakeDrop",
    "ShakeShake",
    "available_backends",
    "build_info",
    "default_backend",
    "functional",
    "select_backend",
    "shake_drop_schedule",
    "use_backend",
]
