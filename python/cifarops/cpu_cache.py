"""The cache of the CPU ops' large outputs (csrc/args/cpu_output_cache.h says why it exists).

The compiled CPU ops take each output of 1 MiB or more from blocks that earlier outputs used and freed, so
that a call seldom touches fresh memory: fresh pages cost a fault each, and on virtual machines that hand
freed memory back to the host (free-page reporting) also a fault on the host. The cache keeps at most
``CIFAROPS_CPU_CACHE_MB`` MiB of blocks no tensor uses (1024 by default; 0 keeps none), and only for cifarops'
outputs: nothing else in the process allocates differently. Like ``torch.cuda.empty_cache``,
:func:`empty_cpu_cache` hands the kept blocks back; kept blocks count in the process's resident memory.
"""

from __future__ import annotations

import math

from cifarops import _extension


def _C():
    if not _extension.LOADED:
        raise RuntimeError(f"cifarops: the CPU output cache needs the compiled extension ({_extension.LOAD_ERROR})")
    return _extension._C


def cpu_cache_info() -> dict:
    """``{"cached_bytes", "limit_bytes", "hits", "misses"}``: bytes kept now, the limit, and how many outputs
    came from kept blocks (hits) or needed new ones (misses) since the process started."""
    return _C().cpu_output_cache_info()


def empty_cpu_cache() -> None:
    """Frees every kept block. Outputs still in use return to the cache when freed."""
    _C().empty_cpu_output_cache()


def set_cpu_cache_limit(megabytes: float) -> None:
    """Keep at most ``megabytes`` MiB of freed output blocks (0: none), evicting the oldest beyond it; finite."""
    if isinstance(megabytes, bool) or not isinstance(megabytes, (int, float)) or not 0 <= megabytes < math.inf:
        raise ValueError(f"cifarops.set_cpu_cache_limit: megabytes must be a number >= 0, got {megabytes!r}")
    _C().set_cpu_output_cache_limit(int(megabytes * 2**20))
