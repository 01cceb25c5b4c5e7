"""Pieces every op's benchmark uses: the case record, the modes and the correctness check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

import cifarops

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

    @property
    def numel(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()


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


def saved_bytes(bench: Benchmark) -> int:
    """Bytes autograd saves for backward in one forward pass of eager code."""
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        bench.forward()
    return sum(sizes)


def standard_providers(device: torch.device, call: Callable, baselines: dict) -> dict:
    """name -> implementation for one op: each cifarops kernel backend, the eager reference, the op's
    baselines (what users run today) and torch.compile of the reference. `call` runs the op through
    cifarops.functional with whatever backend is selected."""

    def on(backend):
        def run(*args):
            with cifarops.use_backend(backend):
                return call(*args)

        return run

    found = {f"cifarops[{b}]": on(b) for b in cifarops.available_backends(device) if b != "reference"}
    found["reference"] = on("reference")
    found.update(baselines)
    found["compile(reference)"] = torch.compile(on("reference"), dynamic=False)
    return found
