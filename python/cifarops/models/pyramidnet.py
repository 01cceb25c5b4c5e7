"""PyramidNet + ShakeDrop (Han et al., arXiv 1610.02915; Yamada et al., arXiv 1802.02375), CIFAR version:
the widths grow by alpha / (3 n) per block, rounded as dyhan0920/PyramidNet-PyTorch does, and block l of L
gets ShakeDrop's p_drop = 0.5 l / L."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from cifarops.functional import shake_drop_schedule
from cifarops.models.blocks import PyramidBasicBlock, PyramidBottleneckBlock, init_convolutions


class PyramidNet(nn.Module):
    def __init__(self, depth: int = 272, alpha: float = 200, bottleneck: bool = True, num_classes: int = 10, *,
                 p_drop_last: float = 0.5, checkpoint=False, backend: Optional[str] = None, **shake_drop) -> None:
        super().__init__()
        per_block = 9 if bottleneck else 6
        if depth < per_block + 2 or (depth - 2) % per_block:
            raise ValueError(f"PyramidNet: depth must be {per_block} n + 2 (n >= 1), got {depth}")
        n = (depth - 2) // per_block
        block = PyramidBottleneckBlock if bottleneck else PyramidBasicBlock
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        add_rate = alpha / (3 * n)
        width, in_channels = 16.0, 16
        p_drops = iter(shake_drop_schedule(3 * n, p_drop_last))
        blocks = []
        for stage in range(3):
            for i in range(n):
                width += add_rate
                planes = int(round(width))
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block(in_channels, planes, stride, next(p_drops), checkpoint=checkpoint,
                                    backend=backend, **shake_drop))
                in_channels = planes * block.expansion
        self.blocks = nn.Sequential(*blocks)
        self.bn_final = nn.BatchNorm2d(in_channels)
        self.fc = nn.Linear(in_channels, num_classes)
        init_convolutions(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn_final(h))
        return self.fc(h.mean((2, 3)))
