"""Peak memory since a reset: on a GPU torch.cuda.max_memory_allocated (tensors only); on the CPU the process's
resident high-water mark (VmHWM, Linux; everything the process holds: tensors, Python, libraries). Used by the
model benchmark (a training step's peak) and the training script (each epoch's, in its log and TensorBoard)."""

from __future__ import annotations

import os
import resource

import torch


def resident_bytes() -> int:
    """The process's resident set now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset(device: torch.device) -> bool:
    """Starts the peak afresh; on the CPU (Linux: clear_refs 5) returns False where the kernel refuses, and the
    peak then counts from the process's start."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes(device: torch.device) -> int:
    """The peak since the last :func:`reset`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
