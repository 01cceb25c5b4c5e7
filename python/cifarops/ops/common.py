"""Argument checks and layout rules shared by the Python side of every op.

The C++ ops check their own arguments (csrc/args/); these checks guard the functional API (all backends,
the reference included) and the Triton ops. Errors name the argument: TypeError for a wrong type or
dtype, ValueError for a wrong value, shape or device.
"""

from __future__ import annotations

import torch

FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def dense_format(t: torch.Tensor) -> torch.memory_format:
    """The layout kernels walk: channels_last when stored that way, else NCHW (as csrc/args/common.h)."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """Kernels compute in float64 for float64 tensors, in float32 for every other floating type."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_tensor(t, name: str, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def check_nc_input(t, name: str, op: str) -> None:
    """An (N, C, *spatial) tensor of a supported floating dtype."""
    check_tensor(t, name, op)
    if t.dtype not in FLOATING:
        raise TypeError(f"{op}: {name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    if t.dim() < 2:
        raise ValueError(f"{op}: {name} must have at least 2 dimensions (N, C, ...), got shape {tuple(t.shape)}")


def check_same_device(t: torch.Tensor, ref: torch.Tensor, name: str, op: str, ref_name: str = "h") -> None:
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def check_floating(t, name: str, op: str) -> None:
    check_tensor(t, name, op)
    if not t.dtype.is_floating_point:
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def check_range(value, name: str, op: str) -> tuple[float, float]:
    """A (low, high) pair with low <= high, as floats."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {name} must be a pair (low, high) of numbers, got {value!r}") from None
    if not low <= high:
        raise ValueError(f"{op}: {name} must satisfy low <= high, got ({low}, {high})")
    return low, high


def check_choice(value, name: str, choices: tuple[str, ...], op: str) -> str:
    if value not in choices:
        raise ValueError(f"{op}: {name} must be one of {choices}, got {value!r}")
    return value


# The Python twins of the C++ checks, by op name, for the kernels written in Python: backends.op runs the
# reference backend's functions behind them (the compiled ops check in C++, the Triton ops call them).
PYTHON_CHECKS: dict = {}


def check_rng_state(state, ref: torch.Tensor, name: str, op: str) -> None:
    """An explicit RNG state: an int64 tensor {seed, offset} on the input's device (as csrc/args/rng.h)."""
    check_tensor(state, name, op)
    if state.device != ref.device:
        raise ValueError(f"{op}: {name} is on {state.device} but the input is on {ref.device}")
    if state.dtype != torch.int64:
        raise TypeError(f"{op}: {name} must be an int64 tensor {{seed, offset}}, got {state.dtype}")
    if state.numel() != 2:
        raise ValueError(f"{op}: {name} must have two elements {{seed, offset}}, got {state.numel()}")
