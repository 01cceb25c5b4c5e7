"""Goodfellow et al.'s CIFAR-10 maxout network (arXiv 1302.4389; pylearn2's scripts/papers/maxout/cifar10.yaml):
three convolutional maxout layers (96, 192, 192 units of 2 pieces; kernels 8, 8, 5; padding 4, 3, 3; max
pooling 4/2, 4/2, 2/2 with pylearn2's ceil rounding), a fully connected maxout layer of 500 units of 5 pieces
and a softmax layer; dropout 0.2 on the input and 0.5 on every other layer's input. Pieces are contiguous
channels, as pylearn2 groups them. The max-norm constraints are the optimiser's business, not the model's.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from cifarops.models.blocks import CheckpointedBlock, check_block_input
from cifarops.modules import Maxout


class MaxoutConvLayer(CheckpointedBlock):
    """dropout - conv (units x pieces channels) - maxout - max pooling, checkpointed as one block."""

    uses_torch_noise = True  # dropout

    def __init__(self, in_channels: int, units: int, pieces: int, kernel: int, padding: int, pool: int, stride: int,
                 dropout: float, *, checkpoint=False, backend: Optional[str] = None) -> None:
        super().__init__(checkpoint)
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv2d(in_channels, units * pieces, kernel, padding=padding)
        self.maxout = Maxout(pieces, backend=backend)
        self.pool = nn.MaxPool2d(pool, stride, ceil_mode=True)

    def check_input(self, x) -> None:
        check_block_input(x, self.conv.in_channels, self.conv.weight, type(self).__name__)

    def block_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.maxout(self.conv(self.dropout(x))))


class GoodfellowMaxoutNet(nn.Module):
    def __init__(self, num_classes: int = 10, *, channels=(96, 192, 192), fc_units: int = 500, checkpoint=False,
                 backend: Optional[str] = None, image_size: int = 32) -> None:
        super().__init__()
        self.image_size = image_size
        layers, in_channels, size = [], 3, image_size
        # (units, kernel, padding, pool, pool stride, input dropout) per layer, from the yaml
        for units, kernel, padding, pool, stride, dropout in zip(
            channels, (8, 8, 5), (4, 3, 3), (4, 4, 2), (2, 2, 2), (0.2, 0.5, 0.5)
        ):
            layers.append(MaxoutConvLayer(in_channels, units, 2, kernel, padding, pool, stride, dropout,
                                          checkpoint=checkpoint, backend=backend))
            size = -(-(size + 2 * padding - kernel + 1 - pool) // stride) + 1  # ceil-mode pooling
            in_channels = units
        self.features = nn.Sequential(*layers)
        flat = in_channels * size * size
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(flat, fc_units * 5), Maxout(5, backend=backend),
            nn.Dropout(0.5), nn.Linear(fc_units, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The linear layer's width fixes the image size; checked first, as the layers before it would draw dropout.
        if isinstance(x, torch.Tensor) and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"GoodfellowMaxoutNet: images must be {self.image_size}x{self.image_size}, "
                             f"got shape {tuple(x.shape)}")
        return self.classifier(self.features(x))
