"""Pieces every op's benchmark uses: the case record, the modes and the correctness check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

import cifarops

MODES = ("forward", "backward", "full")
# How much the report runs: "quick" (CI's), "default" (every op at its CIFAR headline shape, minutes),
# "full" (every shape: the whole report).
PROFILES = ("quick", "default", "full")


def profile_shapes(profile: str, full: list, quick: list) -> list:
    """An op's shapes for a profile: the first of its quick shapes is its headline shape."""
    return {"quick": quick, "default": quick[:1], "full": full}[profile]


def shape_cases(op: str, dtypes, profile: str, shapes, full: list, quick: list) -> list:
    """The cases of an op timed at its input shape alone: the command line's shapes, else the profile's."""
    return [Case(op, tuple(shape), dtype) for dtype in dtypes for shape in shapes or profile_shapes(profile, full, quick)]


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
    found["compile(reference)"] = CompiledPerCase(on("reference"))
    return found


class CompiledPerCase:
    """torch.compile of `fn`, compiled afresh for each case (`for_case`), so that no case inherits another's
    cache: one function compiled with dynamic=False for every shape and mode of an op hits Dynamo's
    recompile_limit (8) and runs the rest in eager, while its rows would still say compiled. `graph_calls`
    counts the calls that went through a compiled graph, so that the report can check each compiled row
    (and the report runs with torch._dynamo.config.fail_on_recompile_limit_hit: a limit hit is an error,
    never a silent eager fallback)."""

    BACKEND = "inductor"  # what the report compiles with (the tests use "eager": Dynamo alone, in seconds)

    def __init__(self, fn: Callable):
        self.fn = fn
        self.graph_calls = 0

    def for_case(self) -> Callable:
        import torch._dynamo

        torch._dynamo.reset()  # forget the previous case's graphs and their recompile count

        def counting(gm: torch.fx.GraphModule, example_inputs):
            compiled = backend(gm, example_inputs)

            def run(*args):
                self.graph_calls += 1
                return compiled(*args)

            return run

        if self.BACKEND == "inductor":
            from torch._inductor.compile_fx import compile_fx as backend
        else:
            backend = torch._dynamo.lookup_backend(self.BACKEND)
        return torch.compile(self.fn, dynamic=False, backend=counting)
