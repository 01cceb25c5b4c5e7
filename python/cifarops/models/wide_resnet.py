"""Wide ResNet (Zagoruyko & Komodakis, arXiv 1605.07146), e.g. WRN-28-10: a 16-channel 3x3 stem, three
stages of (depth - 4) / 6 pre-activation blocks of widths 16k, 32k, 64k, BN-ReLU, average pooling, linear.
``drop_activation=0.95`` makes every ReLU a Drop-Activation layer of that keep probability, the blocks' and the
final one before pooling, as the official network does (Liang, Khoo & Yang, arXiv 1811.05850, whose WRN-28-10
reaches 96.55 %; LeungSamWai/Drop-Activation, models/cifar/da_wrn.py)."""

from __future__ import annotations

import torch
from torch import nn

from cifarops.models.blocks import WideBasicBlock, init_convolutions
from cifarops.modules import DropActivation


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 10, *, dropout: float = 0.0,
                 checkpoint=False, drop_activation=None, backend=None) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet: depth must be 6 n + 4 (n >= 1), got {depth}")
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        blocks, in_channels = [], 16
        for stage, out_channels in enumerate((16 * widen, 32 * widen, 64 * widen)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(WideBasicBlock(in_channels, out_channels, stride, dropout, checkpoint=checkpoint,
                                             drop_activation=drop_activation, backend=backend))
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_channels)
        self.act = torch.relu if drop_activation is None else DropActivation(drop_activation, backend=backend)
        self.fc = nn.Linear(in_channels, num_classes)
        init_convolutions(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn(self.blocks(self.conv1(x))))
        return self.fc(h.mean((2, 3)))
