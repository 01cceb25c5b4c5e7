"""cifarops: fused CUDA, Triton and C++ kernels for the regularised CNN layers of the best CIFAR results.

Public API: layers (``ShakeDrop``, ``StochasticDepth``, ``DropActivation``, ``ShakeShake``, ``Maxout``, ``ProbabilisticMaxout``,
``FractionalMaxPool2d``, ``StochasticPool2d``),
``cifarops.functional``, ``fmp_model_average``, checkpointing (``Checkpoint``, ``cifarops.checkpoint``), the
model zoo (``cifarops.models``), swapping the fused layers into existing models (``swap_layers``), training
(``python -m cifarops.train``), data and pipeline parallelism (``cifarops.distributed``), backend control
(``available_backends``, ``use_backend``, ``select_backend``), the CPU output cache (``cpu_cache_info``,
``empty_cpu_cache``, ``set_cpu_cache_limit``) and ``build_info``.
"""

from cifarops import ops  # noqa: F401  (registers fake kernels, autograd formulas and Triton ops)
from cifarops._extension import build_info
from cifarops.backends import BACKENDS, available_backends, default_backend, select_backend, use_backend
from cifarops.functional import fmp_model_average, shake_drop_schedule, stochastic_depth_schedule
from cifarops.modules import (DropActivation, FractionalMaxPool2d, Maxout, ProbabilisticMaxout, ShakeDrop, ShakeShake,
                              StochasticDepth, StochasticPool2d)
from cifarops import functional  # noqa: E402
from cifarops.checkpoint import Checkpoint
from cifarops.cpu_cache import cpu_cache_info, empty_cpu_cache, set_cpu_cache_limit
from cifarops.swap import swap_layers
from cifarops import checkpoint, distributed, models  # noqa: E402  (modules: cifarops.checkpoint.checkpoint, ...)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "Checkpoint",
    "DropActivation",
    "FractionalMaxPool2d",
    "Maxout",
    "ProbabilisticMaxout",
    "ShakeDrop",
    "ShakeShake",
    "StochasticDepth",
    "StochasticPool2d",
    "available_backends",
    "build_info",
    "checkpoint",
    "cpu_cache_info",
    "default_backend",
    "distributed",
    "empty_cpu_cache",
    "fmp_model_average",
    "functional",
    "models",
    "select_backend",
    "set_cpu_cache_limit",
    "shake_drop_schedule",
    "stochastic_depth_schedule",
    "swap_layers",
    "use_backend",
]
