"""Huang et al.'s ResNet with stochastic depth (arXiv 1603.09382), e.g. ResNet-110: a 16-channel 3x3 stem with
BN-ReLU, three stages of (depth - 2) / 6 basic blocks of widths 16, 32, 64, average pooling, linear. Block l of
L is dropped with p_l = l / L * p_last (the paper's linear rule, p_L = 0.5), in Huang's unscaled form."""

from __future__ import annotations

import torch
from torch import nn

from cifarops.functional import stochastic_depth_schedule
from cifarops.models.blocks import StochasticDepthBlock, conv3x3, init_convolutions


class StochasticDepthResNet(nn.Module):
    def __init__(self, depth: int = 110, p_last: float = 0.5, num_classes: int = 10, *, checkpoint=False,
                 backend=None) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"StochasticDepthResNet: depth must be 6 n + 2 (n >= 1), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        p_drops = iter(stochastic_depth_schedule(3 * n, p_last))
        blocks, in_channels = [], 16
        for stage, out_channels in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(StochasticDepthBlock(in_channels, out_channels, stride, next(p_drops),
                                                   checkpoint=checkpoint, backend=backend))
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_channels, num_classes)
        init_convolutions(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(h.mean((2, 3)))
