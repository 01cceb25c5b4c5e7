"""Swapping cifarops's fused layers into a model that already exists:

    model, report = cifarops.swap_layers(model)
    print(report)

replaces every ``torch.nn.FractionalMaxPool2d`` with :class:`cifarops.FractionalMaxPool2d` (PyTorch's outputs,
indices and gradients for the same draws, from the same generator calls), timm's ``DropPath`` and torchvision's
``StochasticDepth`` with :class:`cifarops.StochasticDepth` (the same outputs for the same mask; the mask itself is
drawn from cifarops's Philox stream, not from theirs; timm's ``scale_by_keep=False`` is left alone, as its
evaluation differs from Huang's unscaled form), and points every cifarops layer pinned to the ``reference``
backend (``cifarops.models.create(..., reference=True)``) at the fused kernels. timm and torchvision are never
imported here: a model holding their layers has imported them already.

What is not swapped: a copy of a layer from another code base (say, the 30-line ShakeDrop autograd Function of a
PyramidNet repository). Its conventions are its own (whether ``p_drop`` is the drop or the survival
probability, the alpha and beta ranges, one gate per batch or per sample, what evaluation multiplies by, which
generator it draws from), and it is often called as a function inside ``forward``, where no module walk can
see it; guessing from a class name would silently change what a model trains. Such a code base is swapped by
its import (``from cifarops import ShakeDrop``: examples/swap_existing_model.py); the report lists the modules
whose class name looks like one of our layers, so that none is missed.
"""

from __future__ import annotations

import copy
import sys
from typing import NamedTuple, Optional

from torch import nn

from cifarops import backends
from cifarops.modules import FractionalMaxPool2d, StochasticDepth, _Layer

# Hooks and their registries: the new module shares the old one's dictionaries, so every hook keeps firing and
# every handle the user holds can still remove its hook (a handle refers to the dictionary, not the module).
_HOOK_STATE = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_is_full_backward_hook",
    "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)

# Parts of the class names (lower case, underscores dropped) of layers that other code bases write for themselves.
_LOOK_ALIKES = ("shakedrop", "shakeshake", "maxout", "fractionalmaxpool", "droppath", "stochasticdepth")


class Replacement(NamedTuple):
    name: str  # qualified name in the model ("" for the model itself)
    old: str
    new: str


class SwapReport:
    """What :func:`swap_layers` replaced (``replaced``: qualified name, old -> new) and which look-alike layers
    of other code bases it left alone (``left_alone``: qualified name, class)."""

    def __init__(self) -> None:
        self.replaced: list[Replacement] = []
        self.left_alone: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.replaced)

    def __iter__(self):
        return iter(self.replaced)

    def __str__(self) -> str:
        lines = [f"cifarops.swap_layers: {len(self.replaced)} layer(s) replaced"]
        lines += [f"  {r.name or '(model)'}: {r.old} -> {r.new}" for r in self.replaced]
        if self.left_alone:
            lines.append("left alone (layers of another code base: swap them by importing cifarops's layer instead):")
            lines += [f"  {name}: {cls}" for name, cls in self.left_alone]
        return "\n".join(lines)

    __repr__ = __str__


class SwapResult(NamedTuple):
    model: nn.Module
    report: SwapReport


def _class_name(module: nn.Module) -> str:
    cls = type(module)
    if cls.__module__.startswith("cifarops"):
        return f"cifarops.{cls.__qualname__}"
    if cls.__module__.startswith("torch.nn"):
        return f"torch.nn.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe(module: nn.Module) -> str:
    if isinstance(module, _Layer):
        return f"{_class_name(module)}(backend={module.backend or 'auto'})"
    return _class_name(module)


def _from_torch_fmp(old: nn.FractionalMaxPool2d, backend: Optional[str]) -> FractionalMaxPool2d:
    # The same buffer tensor (not a copy): its device, dtype and any reference the user keeps stay valid.
    new = FractionalMaxPool2d(old.kernel_size, old.output_size, old.output_ratio, old.return_indices,
                              old._random_samples, backend=backend)
    return _keep_hooks(old, new)


def _keep_hooks(old: nn.Module, new: nn.Module) -> nn.Module:
    new.train(old.training)
    for name in _HOOK_STATE:
        if hasattr(old, name):
            setattr(new, name, getattr(old, name))
    return new


# The drop-path layers of other libraries, by the module that defines them, and how their settings map onto
# cifarops.StochasticDepth's: timm's DropPath(drop_prob, scale_by_keep) draws per sample; torchvision's
# StochasticDepth(p, mode) always scales by 1 / (1 - p). timm's DropPath(scale_by_keep=False) is left alone: it
# drops unscaled in training but is the identity in evaluation, where Huang's unscaled form (ours) scales by 1 - p.
_DROP_PATHS = {
    ("timm.layers.drop", "DropPath"): lambda m: (m.drop_prob, "row", True) if m.scale_by_keep else None,
    ("torchvision.ops.stochastic_depth", "StochasticDepth"): lambda m: (m.p, m.mode, True),
}


def _drop_path_settings(module: nn.Module):
    """(p, mode, scale_by_keep) when ``module`` is exactly timm's DropPath or torchvision's StochasticDepth (looked
    up in the modules already imported) in a setting cifarops computes alike, else None."""
    for (module_name, class_name), settings in _DROP_PATHS.items():
        defining = sys.modules.get(module_name)
        if defining is not None and type(module) is getattr(defining, class_name, None):
            return settings(module)
    return None


def _is_look_alike(module: nn.Module) -> bool:
    if type(module).__module__.startswith("cifarops"):
        return False
    name = type(module).__name__.lower().replace("_", "")
    return any(known in name for known in _LOOK_ALIKES)


def swap_layers(model: nn.Module, *, backend: Optional[str] = None, inplace: bool = True) -> SwapResult:
    """Replaces, in ``model`` (in place unless ``inplace=False``, which swaps a deep copy), every
    ``torch.nn.FractionalMaxPool2d`` (exactly that class: a subclass may change its behaviour) with
    :class:`cifarops.FractionalMaxPool2d`, every timm ``DropPath`` and torchvision ``StochasticDepth`` (exactly
    those classes) with :class:`cifarops.StochasticDepth`, and re-points every cifarops layer pinned to the
    ``reference`` backend. Returns ``(model, report)``: the swapped model (a new module only when ``model`` itself is a
    ``torch.nn.FractionalMaxPool2d``) and a printable :class:`SwapReport`.

    ``backend``: None (the default) lets each call choose the fastest backend for its tensors' device, as
    cifarops layers do; a name pins the swapped layers to that backend (checked when they run, like a
    layer's ``backend=``). Kept: settings, ``_random_samples``, every parameter and buffer (the same
    tensors, so device, dtype, the state dict's keys and an optimiser's references stay valid), the training
    flag and hooks. A module shared between several places is replaced by one new module everywhere.
    """
    op = "cifarops.swap_layers"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{op}: model must be a torch.nn.Module, got {type(model).__name__}")
    if backend is not None and backend not in backends.BACKENDS:
        raise ValueError(f"{op}: backend must be None (automatic) or one of {backends.BACKENDS}, got {backend!r}")
    if not isinstance(inplace, bool):
        raise TypeError(f"{op}: inplace must be a bool, got {type(inplace).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    report = SwapReport()
    done: dict[int, nn.Module] = {}  # id(old module) -> what it became, for modules registered twice

    def swap(module: nn.Module, name: str) -> nn.Module:
        if id(module) in done:
            return done[id(module)]
        result = module
        drop_path = _drop_path_settings(module)
        if type(module) is nn.FractionalMaxPool2d:
            result = _from_torch_fmp(module, backend)
            report.replaced.append(Replacement(name, _describe(module), _describe(result)))
        elif drop_path is not None:
            p, mode, scale_by_keep = drop_path
            result = _keep_hooks(module, StochasticDepth(float(p), mode, bool(scale_by_keep), backend=backend))
            report.replaced.append(Replacement(name, _describe(module), _describe(result)))
        elif isinstance(module, _Layer) and module.backend == "reference" and backend != "reference":
            old = _describe(module)
            module.backend = backend
            report.replaced.append(Replacement(name, old, _describe(module)))
        else:
            if isinstance(module, nn.FractionalMaxPool2d) or _is_look_alike(module):
                report.left_alone.append((name, _class_name(module)))
            for child_name, child in list(module._modules.items()):
                if child is not None:
                    module._modules[child_name] = swap(child, f"{name}.{child_name}" if name else child_name)
        done[id(module)] = result
        return result

    return SwapResult(swap(model, ""), report)


__all__ = ["Replacement", "SwapReport", "SwapResult", "swap_layers"]
