"""The model zoo: the CIFAR networks the cifarops layers were made for, each buildable from the cifarops
layers or, with ``reference=True``, from the pure-PyTorch reference layers, and with checkpointed blocks.

    model = cifarops.models.create("pyramidnet272-a200-shakedrop", num_classes=10, checkpoint="full")

``checkpoint``: False/"none", True/"full" (keep each block's input only), "selective" (also keep the outputs of
the convolutions that are expensive for their size) or "cheap" (keep every convolution's output); see
:mod:`cifarops.checkpoint`. Extra keyword arguments override the architecture's
hyper-parameters (``depth``, ``alpha``, ``width``, ``widen``, ``filters``, ...), for smaller variants.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from cifarops.models.blocks import (
    CheckpointedBlock, PyramidBasicBlock, PyramidBottleneckBlock, ShakeShakeBlock, ShakeShakeShortcut, StochasticDepthBlock,
    WideBasicBlock,
)
from cifarops.models.fmp_net import FMPLayer, GrahamFMPNet
from cifarops.models.maxout_net import GoodfellowMaxoutNet, MaxoutConvLayer
from cifarops.models.pyramidnet import PyramidNet
from cifarops.models.resnet import StochasticDepthResNet
from cifarops.models.shake_shake_resnet import ShakeShakeResNet
from cifarops.models.stochastic_pool_net import StochasticPoolConvLayer, ZeilerStochasticPoolNet
from cifarops.models.wide_resnet import WideResNet

# name -> (class, the paper's hyper-parameters, the parameter count the paper states for CIFAR-10, if it does)
MODELS: dict[str, tuple[Callable[..., nn.Module], dict, Optional[float]]] = {
    "pyramidnet272-a200-shakedrop": (PyramidNet, dict(depth=272, alpha=200, bottleneck=True), 26.0e6),
    "pyramidnet110-a270-shakedrop": (PyramidNet, dict(depth=110, alpha=270, bottleneck=False), 28.3e6),
    "resnet110-stochastic-depth": (StochasticDepthResNet, dict(depth=110, p_last=0.5), None),  # 1.7M: a test
    "shake-shake26-2x96d": (ShakeShakeResNet, dict(depth=26, width=96), 26.2e6),
    "wrn28-10": (WideResNet, dict(depth=28, widen=10), 36.5e6),
    "fmp-graham-cifar10": (GrahamFMPNet, dict(filters=160, layers=12), None),
    "maxout-goodfellow-cifar10": (GoodfellowMaxoutNet, dict(), None),
    "stochastic-pool-zeiler-cifar10": (ZeilerStochasticPoolNet, dict(filters=64), None),
}

# Small variants of every network (the same code paths at a fraction of the cost): `create(name, **SMALL[name])`,
# used by the tests and by the CPU training-step benchmarks.
SMALL: dict[str, dict] = {
    "pyramidnet272-a200-shakedrop": dict(depth=20, alpha=24),
    "pyramidnet110-a270-shakedrop": dict(depth=14, alpha=24),
    "resnet110-stochastic-depth": dict(depth=14),
    "shake-shake26-2x96d": dict(depth=8, width=16),
    "wrn28-10": dict(depth=10, widen=2),
    "fmp-graham-cifar10": dict(filters=8),
    "maxout-goodfellow-cifar10": dict(channels=(16, 32, 32), fc_units=64),
    "stochastic-pool-zeiler-cifar10": dict(filters=8),
}


def names() -> list[str]:
    """The names :func:`create` accepts."""
    return list(MODELS)


def create(name: str, num_classes: int = 10, checkpoint=False, reference: bool = False, **overrides) -> nn.Module:
    """Builds the model ``name`` (see :func:`names`) with ``num_classes`` outputs."""
    if name not in MODELS:
        raise ValueError(f"cifarops.models.create: unknown model {name!r}; choose from {names()}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"cifarops.models.create: num_classes must be a positive int, got {num_classes!r}")
    cls, params, _ = MODELS[name]
    return cls(num_classes=num_classes, checkpoint=checkpoint, backend="reference" if reference else None,
               **{**params, **overrides})


__all__ = [
    "CheckpointedBlock", "FMPLayer", "GoodfellowMaxoutNet", "GrahamFMPNet", "MODELS", "MaxoutConvLayer", "PyramidBasicBlock", "SMALL",
    "PyramidBottleneckBlock", "PyramidNet", "ShakeShakeBlock", "ShakeShakeResNet", "ShakeShakeShortcut", "StochasticDepthBlock",
    "StochasticDepthResNet", "StochasticPoolConvLayer", "WideBasicBlock",
    "WideResNet", "ZeilerStochasticPoolNet", "create", "names",
]
