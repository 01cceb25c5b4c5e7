"""cifarops: fused CUDA, Triton and C++ kernels for the regularised CNN layers of the best CIFAR results.

Public API: layers (``ShakeDrop``, ``ShakeShake``, ``Maxout``, ``ProbabilisticMaxout``, ``FractionalMaxPool2d``),
``cifarops.functional``, ``fmp_model_average``, backend control (``available_backends``, ``use_backend``,
``select_backend``) and ``build_info``.
"""

from cifarops import ops  # noqa: F401  (registers fake kernels, autograd formulas and Triton ops)
from cifarops._extension import build_info
from cifarops.backends import BACKENDS, available_backends, default_backend, select_backend, use_backend
from cifarops.functional import fmp_model_average, shake_drop_schedule
from cifarops.modules import FractionalMaxPool2d, Maxout, ProbabilisticMaxout, ShakeDrop, ShakeShake
from cifarops import functional  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "FractionalMaxPool2d",
    "Maxout",
    "ProbabilisticMaxout",
    "ShakeDrop",
    "ShakeShake",
    "available_backends",
    "build_info",
    "default_backend",
    "fmp_model_average",
    "functional",
    "select_backend",
    "shake_drop_schedule",
    "use_backend",
]
