"""Shake-Shake ResNet (Gastaldi, arXiv 1705.07485), e.g. Shake-Shake 26 2x96d: a 16-channel 3x3 stem, three
stages of (depth - 2) / 6 two-branch blocks of widths w, 2w, 4w, ReLU, global average pooling, linear."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from cifarops.models.blocks import ShakeShakeBlock, init_convolutions


class ShakeShakeResNet(nn.Module):
    def __init__(self, depth: int = 26, width: int = 96, num_classes: int = 10, *, checkpoint=False,
                 backend: Optional[str] = None, **shake_shake) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ShakeShakeResNet: depth must be 6 n + 2 (n >= 1), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, in_channels = [], 16
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(ShakeShakeBlock(in_channels, out_channels, stride, checkpoint=checkpoint,
                                              backend=backend, **shake_shake))
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_channels, num_classes)
        init_convolutions(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.blocks(self.bn1(self.conv1(x))))
        return self.fc(h.mean((2, 3)))
