"""Zeiler & Fergus's CIFAR-10 stochastic pooling network (arXiv 1301.3557): three convolutional
layers of 64 5x5 filters, each followed by a ReLU, 3x3 stochastic pooling with stride 2 and local response
normalisation across channels, then a fully connected layer to the classes (the softmax is the loss's).

What the paper leaves open, assumed here: "same" convolutions (padding 2); ceil-mode pooling, cuda-convnet's
output size (32 -> 16 -> 8 -> 4); the normalisation of cuda-convnet's layers-18pct (3 channels, scale 5e-5,
power 0.75: ``torch.nn.LocalResponseNorm(3, alpha=5e-5, beta=0.75, k=1.0)``, which divides alpha by the size as
cuda-convnet divides its scale). No dropout: stochastic pooling is the regulariser.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from cifarops.models.blocks import CheckpointedBlock, check_block_input
from cifarops.modules import StochasticPool2d

KERNEL, PADDING, POOL, POOL_STRIDE = 5, 2, 3, 2


def pooled_size(size: int) -> int:
    """A plane's side after a "same" convolution and ceil-mode 3x3 pooling with stride 2 (no padding: the last
    window always starts inside the plane, so ceil mode never drops it); below 1 when the plane is too small."""
    return -(-(size - POOL) // POOL_STRIDE) + 1


class StochasticPoolConvLayer(CheckpointedBlock):
    """conv 5x5 - ReLU - stochastic pooling 3/2 - local response normalisation, checkpointed as one block."""

    def __init__(self, in_channels: int, filters: int, *, checkpoint=False, backend: Optional[str] = None) -> None:
        super().__init__(checkpoint)
        self.conv = nn.Conv2d(in_channels, filters, KERNEL, padding=PADDING)
        self.relu = nn.ReLU()
        self.pool = StochasticPool2d(POOL, stride=POOL_STRIDE, ceil_mode=True, backend=backend)
        self.norm = nn.LocalResponseNorm(3, alpha=5e-5, beta=0.75, k=1.0)

    def check_input(self, x) -> None:
        check_block_input(x, self.conv.in_channels, self.conv.weight, type(self).__name__)

    def block_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.pool(self.relu(self.conv(x))))


class ZeilerStochasticPoolNet(nn.Module):
    def __init__(self, num_classes: int = 10, *, filters: int = 64, layers: int = 3, checkpoint=False,
                 backend: Optional[str] = None, image_size: int = 32) -> None:
        super().__init__()
        if isinstance(image_size, bool) or not isinstance(image_size, int):
            raise ValueError(f"ZeilerStochasticPoolNet: image_size must be an int, got {image_size!r}")
        self.image_size = image_size
        blocks, in_channels, size = [], 3, image_size
        for _ in range(layers):
            if pooled_size(size) < 1:
                raise ValueError(f"ZeilerStochasticPoolNet: image_size {image_size} is too small for {layers} layers: "
                                 f"a pooling would get {size}x{size} planes, too small for its {POOL}x{POOL} window")
            blocks.append(StochasticPoolConvLayer(in_channels, filters, checkpoint=checkpoint, backend=backend))
            size, in_channels = pooled_size(size), filters
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * size * size, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The linear layer's width fixes the image size; checked first, as the layers before it would draw.
        if isinstance(x, torch.Tensor) and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"ZeilerStochasticPoolNet: images must be {self.image_size}x{self.image_size}, "
                             f"got shape {tuple(x.shape)}")
        return self.classifier(self.features(x))
