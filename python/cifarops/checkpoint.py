"""Activation checkpointing that changes nothing: the recomputation of GPipe (arXiv 1811.06965) and Chen et
al. (arXiv 1604.06174) for blocks with stochastic layers and BatchNorm.

A checkpointed block keeps (almost) none of its activations in the forward pass and recomputes them when
backward needs them. torch.utils.checkpoint alone does not make the recomputation identical for our blocks:

- its recomputation draws the noise again from a restored generator state, which reproduces the forward
  pass's draws only if nothing else moved that generator, and still draws inside backward
  (pytorch/pytorch#190758); here every cifarops draw is recorded on a tape (:mod:`cifarops.noise`) in the
  forward pass and handed back, drawing nothing, during the recomputation;
- BatchNorm would update its running statistics a second time (gpleiss/efficient_densenet_pytorch#73);
  here BatchNorm layers in training mode update scratch copies while the block is recomputed, so their
  running statistics are updated once per forward pass.

Modes: ``"none"``; ``"full"`` keeps only the block's inputs and recomputes everything; ``"selective"`` also
keeps the outputs of the convolutions that are expensive to recompute for their size (3x3 and narrowing
convolutions, matrix products) and recomputes the cheap layers (BatchNorm, ReLU, ShakeDrop, pooling: the
memory-efficient DenseNet's trade) and the widening 1x1 convolutions, through torch's selective activation
checkpointing. ``"cheap"`` keeps every convolution's output and recomputes only the cheap layers: the least
recomputation, the least saving.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.utils import checkpoint as torch_checkpoint

from cifarops import noise

MODES = ("none", "full", "selective", "cheap")

# Matrix products whose outputs selective mode keeps; convolutions are decided one by one (_worth_keeping).
_KEPT_PRODUCTS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


def checkpoint_mode(value) -> str:
    """A block's ``checkpoint`` option as a mode: False/None -> "none", True -> "full", or a mode's name."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "full"
    if value not in MODES:
        raise ValueError(f"cifarops: checkpoint must be a bool or one of {MODES}, got {value!r}")
    return value


@contextlib.contextmanager
def _running_stats_kept(modules: Iterable[nn.Module]) -> Iterator[None]:
    """BatchNorm layers in training mode update scratch copies of their running statistics while the block is
    recomputed, and get their own tensors back untouched afterwards. (Turning the update off instead would
    change which tensors the recomputation saves for backward, which checkpointing forbids.)"""
    names = ("running_mean", "running_var", "num_batches_tracked")
    layers = [
        m for module in modules for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    originals = [{name: m._buffers[name] for name in names if m._buffers.get(name) is not None} for m in layers]
    for m, buffers in zip(layers, originals):
        for name, tensor in buffers.items():
            m._buffers[name] = tensor.clone()
    try:
        yield
    finally:
        for m, buffers in zip(layers, originals):
            m._buffers.update(buffers)


def _worth_keeping(op, args) -> bool:
    """Selective mode keeps an output when recomputing it costs more multiply-adds per element than the
    element has channels: a 3x3 or narrowing convolution's output is kept, the widening 1x1 convolution that
    ends a bottleneck block (p multiply-adds for each of 4p channels) is recomputed with the cheap layers,
    which is where most of a bottleneck block's memory goes."""
    if op in _KEPT_PRODUCTS:
        return True
    if op is not torch.ops.aten.convolution.default:
        return False
    weight, transposed = args[1], args[6]
    if transposed:
        return True
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    return in_per_group * math.prod(weight.shape[2:]) >= out_channels


def _keep_expensive(ctx, op, *args, **kwargs):
    policy = torch_checkpoint.CheckpointPolicy
    return policy.MUST_SAVE if _worth_keeping(op, args) else policy.PREFER_RECOMPUTE


def _keep_products(ctx, op, *args, **kwargs):
    policy = torch_checkpoint.CheckpointPolicy
    keep = op in _KEPT_PRODUCTS or op is torch.ops.aten.convolution.default
    return policy.MUST_SAVE if keep else policy.PREFER_RECOMPUTE


_POLICIES = {"selective": _keep_expensive, "cheap": _keep_products}


class _Contexts:
    """Several context managers entered as one; each entry makes fresh ones (backward with retain_graph may
    recompute a block twice, and a generator-based context can be entered only once)."""

    def __init__(self, *factories: Callable[[], contextlib.AbstractContextManager]) -> None:
        self.factories = factories
        self.stacks: list[contextlib.ExitStack] = []

    def __enter__(self):
        stack = contextlib.ExitStack()
        for make in self.factories:
            stack.enter_context(make())
        self.stacks.append(stack)
        return self

    def __exit__(self, *exc):
        return self.stacks.pop().__exit__(*exc)


def _contexts(modules: tuple[nn.Module, ...], mode: str):
    tape = noise.Tape()

    def context_fn():
        forward = [lambda: noise.record(tape)]
        recompute = [lambda: noise.replay(tape), lambda: _running_stats_kept(modules)]
        if mode in _POLICIES:
            keep, reuse = torch_checkpoint.create_selective_checkpoint_contexts(_POLICIES[mode])
            forward.append(lambda: keep)
            recompute.append(lambda: reuse)
        return _Contexts(*forward), _Contexts(*recompute)

    return context_fn


def checkpoint(
    function: Callable,
    *args,
    modules: Iterable[nn.Module] = (),
    mode: str = "full",
    preserve_rng_state: bool = True,
    **kwargs,
):
    """``function(*args, **kwargs)`` with its activations recomputed in backward instead of stored.

    ``modules``: the modules ``function`` runs (their BatchNorm layers must not update their running
    statistics twice). The draws of cifarops layers are recorded and replayed; ``preserve_rng_state``
    restores torch's generators for the recomputation as well, for other random layers such as nn.Dropout
    (which then draw the same values again); blocks with no such layer may turn it off. Without autograd
    (inference, ``torch.no_grad``) or with mode ``"none"``, ``function`` simply runs.
    """
    mode = checkpoint_mode(mode)
    if not callable(function):
        raise TypeError(f"cifarops.checkpoint: function must be callable, got {type(function).__name__}")
    # Checked now: the recomputation would meet a bad entry only in backward.
    try:
        modules = tuple(modules)
    except TypeError:
        raise TypeError(f"cifarops.checkpoint: modules must be an iterable of nn.Module, got {type(modules).__name__}") from None
    if not all(isinstance(m, nn.Module) for m in modules):
        raise TypeError(f"cifarops.checkpoint: modules must be an iterable of nn.Module, got {[type(m).__name__ for m in modules]}")
    if mode == "none" or not torch.is_grad_enabled():
        return function(*args, **kwargs)
    if torch.compiler.is_compiling():
        # Inside torch.compile the compiled graph recomputes: AOTAutograd's partitioner never recomputes a
        # random op or a buffer update, so the tape and the BatchNorm guard are not needed (and Dynamo takes
        # no context_fn but selective checkpointing's).
        if mode in _POLICIES:
            context_fn = functools.partial(torch_checkpoint.create_selective_checkpoint_contexts, _POLICIES[mode])
            return torch_checkpoint.checkpoint(function, *args, use_reentrant=False, context_fn=context_fn,
                                               preserve_rng_state=preserve_rng_state, **kwargs)
        return torch_checkpoint.checkpoint(function, *args, use_reentrant=False,
                                           preserve_rng_state=preserve_rng_state, **kwargs)
    return torch_checkpoint.checkpoint(
        function,
        *args,
        use_reentrant=False,
        context_fn=_contexts(modules, mode),
        preserve_rng_state=preserve_rng_state,
        **kwargs,
    )


class Checkpoint(nn.Module):
    """Wraps any block (a residual block of your own, say) so that its activations are recomputed in backward:
    ``Checkpoint(block, mode="full")(*args)`` returns ``block(*args)`` with the same gradients, the same
    BatchNorm running statistics and the same cifarops noise as without the wrapper. See
    :func:`checkpoint`."""

    def __init__(self, block: nn.Module, mode: str = "full", *, preserve_rng_state: bool = True) -> None:
        super().__init__()
        if not isinstance(block, nn.Module):
            raise TypeError(f"cifarops.Checkpoint: block must be an nn.Module, got {type(block).__name__}")
        self.block = block
        self.mode = checkpoint_mode(mode)
        self.preserve_rng_state = preserve_rng_state

    def forward(self, *args, **kwargs):
        return checkpoint(
            self.block, *args, modules=(self.block,), mode=self.mode, preserve_rng_state=self.preserve_rng_state,
            **kwargs,
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
