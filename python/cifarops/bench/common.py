"""Pieces every op's benchmark uses: the case record, the modes and the correctness check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

MODES = ("forward", "backward", "full")


@dataclass(frozen=True)
class Case:
    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    params: tuple = field(default=())  # op-specific (name, value) pairs

    @property
    def label(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.params)
        dtype = str(self.dtype).replace("torch.", "")
        return f"{self.op} {tuple(self.shape)} {dtype}" + (f" {extra}" if extra else "")

    def param(self, name, default=None):
        return dict(self.params).get(name, default)


@dataclass
class Benchmark:
    """What to time for one case: a forward function, its inputs and the gradient fed to backward."""

    forward: Callable[[], torch.Tensor]
    inputs: Sequence[torch.Tensor]


def timed(bench: Benchmark, mode: str) -> Callable[[], object]:
    """A zero-argument callable that runs `mode` (forward, backward or full) once."""
    if mode == "forward":
        return bench.forward
    y = bench.forward()
    grad = torch.ones_like(y)  # made once: its allocation is not part of what is timed
    if mode == "full":
        return lambda: torch.autograd.grad(bench.forward(), bench.inputs, grad)
    return lambda: torch.autograd.grad(y, bench.inputs, grad, retain_graph=True)


def compare(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> str | None:
    """None when every tensor matches within its dtype's tolerance, else a description of the mismatch."""
    tolerances = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5, torch.float64: 1e-10}
    for i, (a, b) in enumerate(zip(got, want)):
        tol = tolerances[b.dtype]
        try:
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
        except AssertionError as error:
            return f"output {i}: {str(error).splitlines()[0]}"
    return None


def saved_bytes(bench: Benchmark) -> int | None:
    """Bytes autograd saves for backward in one forward pass (None where they cannot be observed)."""
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            bench.forward()
    except Exception:  # torch.compile'd code may refuse saved-tensor hooks
        return None
    return sum(sizes)
