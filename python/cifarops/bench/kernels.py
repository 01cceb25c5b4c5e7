"""Device kernels per call: the dispatcher ops a call runs, counted with a TorchDispatchMode.

Shared by the benchmark report's host-time section (:mod:`cifarops.bench.hosttime`) and
tests/test_kernel_count.py (issue 16: one op in forward, one in backward, for every op, level and mode).

The mode sits at the Python dispatch key, below autograd: it sees each op that reaches a backend kernel
(``cifarops::shake_drop``, ``aten::bernoulli_``, the backward op autograd calls, the ``zeros_like`` it makes
for an undefined gradient), but not what a kernel calls inside itself, nor the decomposition of a composite
op (``reshape`` shows up as the ``view`` it becomes). Views and allocations launch no device kernel and are
left out; the lists below name them. Everything else counts, including ``_local_scalar_dense`` (``.item()``,
a device-to-host copy and a sync), ``copy_``, ``_to_copy``, ``clone``, ``fill_``, ``zero_``, ``zeros``,
``zeros_like``, ``full``, ``ones_like`` and ``lift_fresh_copy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ATen ops whose outputs alias their input (no data moves): left out of the count.
VIEW_OPS = frozenset({
    "alias", "as_strided", "detach", "diagonal", "expand", "expand_as", "movedim", "narrow", "permute",
    "select", "slice", "split", "split_with_sizes", "squeeze", "t", "transpose", "unbind", "unflatten",
    "unfold", "unsqueeze", "view", "view_as", "_reshape_alias", "_unsafe_view", "chunk", "flatten", "lift_fresh",
})
# ATen ops that only allocate (uninitialised memory, no kernel): left out of the count.
ALLOCATION_OPS = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "resize_"})
IGNORED_OPS = VIEW_OPS | ALLOCATION_OPS


def op_name(func) -> str:
    """An OpOverload's display name: ``add`` for ``aten::add.Tensor``, ``cifarops::shake_drop`` for ours."""
    name = func._schema.name
    return name[len("aten::"):] if name.startswith("aten::") else name


def counts(name: str) -> bool:
    """Whether an op (by :func:`op_name`) counts as a device kernel."""
    return name not in IGNORED_OPS


class OpRecorder(TorchDispatchMode):
    """Records the name of every op dispatched while active (views and allocations included: see
    :attr:`kernels` for the counted ones)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(op_name(func))
        return func(*args, **(kwargs or {}))

    @property
    def kernels(self) -> list[str]:
        return [name for name in self.ops if counts(name)]


def kernels_of(fn: Callable[[], object]) -> tuple[list[str], object]:
    """(the counted ops ``fn()`` runs, in order; its result)."""
    with OpRecorder() as recorder:
        result = fn()
    return recorder.kernels, result


@dataclass
class CallKernels:
    """The counted ops of one call: its forward and, when it was differentiated, its backward."""

    forward: list[str]
    backward: Optional[list[str]] = None

    @staticmethod
    def describe(ops: Optional[Sequence[str]]) -> str:
        if ops is None:
            return "-"
        return f"{len(ops)}: " + ", ".join(ops) if ops else "0"


def call_kernels(
    forward: Callable[[], object],
    inputs: Sequence[torch.Tensor] = (),
    grad: Optional[torch.Tensor] = None,
) -> CallKernels:
    """Counts ``forward()``'s ops, then, when ``inputs`` are given, those of
    ``torch.autograd.grad(output, inputs, grad)`` separately. The output is ``forward()``'s result, or its
    first element when it returns a tuple (FMP with ``return_indices``). ``grad`` defaults to ones, made
    outside the count; so are the inputs."""
    fwd, out = kernels_of(forward)
    if not inputs:
        return CallKernels(fwd)
    y = out[0] if isinstance(out, (tuple, list)) else out
    if grad is None:
        grad = torch.ones_like(y)
    bwd, _ = kernels_of(lambda: torch.autograd.grad(y, list(inputs), grad))
    return CallKernels(fwd, bwd)
