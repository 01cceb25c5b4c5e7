"""Inputs in the memory layouts every op must accept."""

import torch

LAYOUTS = ["contiguous", "channels_last", "sliced"]


def in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as `t`, stored contiguous, channels_last, or as a non-contiguous slice."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":  # every other element of a wider tensor along the last dimension
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        out = wide[..., ::2]
        assert not out.is_contiguous() or t.shape[-1] <= 1
        return out
    raise ValueError(layout)
