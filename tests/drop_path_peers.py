"""timm's DropPath and torchvision's StochasticDepth, for the swap tests: the real modules where those packages
import (a GPU machine has both), else their code below, verbatim from timm 1.0.31 (timm/layers/drop.py, Apache
License 2.0) and torchvision 0.29.1 (torchvision/ops/stochastic_depth.py, BSD 3-Clause; its usage logging left out),
installed under their own module names, which is where swap_layers looks for them. Neither imports on this
project's CPU machines: torchvision's wheels are CUDA builds, and timm imports torchvision.
"""

from __future__ import annotations

import importlib
import sys
import types

# timm's drop_path itself is the benchmark's baseline copy (verbatim there), so that the two cannot drift.
TIMM_DROP = '''
import torch
from torch import nn

from cifarops.bench.baselines import _timm_drop_path as drop_path


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0., scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)
'''

TORCHVISION_STOCHASTIC_DEPTH = '''
import torch
from torch import nn, Tensor


def stochastic_depth(input: Tensor, p: float, mode: str, training: bool = True) -> Tensor:
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ["batch", "row"]:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input

    survival_rate = 1.0 - p
    if mode == "row":
        size = [input.shape[0]] + [1] * (input.ndim - 1)
    else:
        size = [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


class StochasticDepth(nn.Module):
    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, input: Tensor) -> Tensor:
        return stochastic_depth(input, self.p, self.mode, self.training)
'''


def install(monkeypatch) -> tuple:
    """(timm's DropPath, torchvision's StochasticDepth) classes, each from its own module name in sys.modules."""
    classes = []
    for name, source, cls in (("timm.layers.drop", TIMM_DROP, "DropPath"),
                              ("torchvision.ops.stochastic_depth", TORCHVISION_STOCHASTIC_DEPTH, "StochasticDepth")):
        try:
            module = importlib.import_module(name)
        except ImportError:
            module = types.ModuleType(name)
            exec(compile(source, f"<{name}>", "exec"), module.__dict__)
            monkeypatch.setitem(sys.modules, name, module)
        classes.append(getattr(module, cls))
    return tuple(classes)
