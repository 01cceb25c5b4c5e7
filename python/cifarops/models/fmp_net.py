"""Graham's CIFAR-10 fractional max-pooling network (arXiv 1412.6071, section 3.3):
(160nC2 - FMP cbrt(2))12 - C2 - C1 - output. Layer n (1..12) is a 2x2 convolution to 160 n channels followed
by fractional max-pooling by a factor 2^(1/3); the 32x32 images sit in the middle of a 94x94 input, which
twelve such layers bring down to 2x2; a 2x2 and a 1x1 convolution (160 * 13 and 160 * 14 channels) and a
linear layer end it. Pooling is Graham's best CIFAR setting: overlapping regions, pseudorandom sequences,
one draw per image. Dropout grows linearly from 0 in the first hidden layer to 0.5 in the last, as in the
paper. Batch normalisation after every convolution and leaky ReLUs (slope 1/3, Graham's) are this
implementation's choices, so that the network trains with plain SGD.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from cifarops.models.blocks import CheckpointedBlock, check_block_input
from cifarops.modules import FractionalMaxPool2d


class FMPLayer(CheckpointedBlock):
    """conv(k) - BN - leaky ReLU - dropout [- FMP to `pooled` x `pooled`], checkpointed as one block."""

    uses_torch_noise = True  # dropout

    def __init__(self, in_channels: int, out_channels: int, kernel: int, dropout: float, pooled: Optional[int], *,
                 checkpoint=False, backend: Optional[str] = None) -> None:
        super().__init__(checkpoint)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.pool = None if pooled is None else FractionalMaxPool2d(
            output_size=pooled, regions="overlapping", sequence="pseudorandom", per_image=True, backend=backend
        )

    def check_input(self, x) -> None:
        # torch's convolution lets a meta input through to the BatchNorm behind it, which counts the batch.
        check_block_input(x, self.conv.in_channels, self.conv.weight, type(self).__name__)

    def block_forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(F.leaky_relu(self.bn(self.conv(x)), 1 / 3))
        return h if self.pool is None else self.pool(h)


def fmp_sizes(input_size: int, layers: int, ratio: float) -> list[int]:
    """The spatial size after each conv2-FMP layer: a valid 2x2 convolution removes one pixel, the pooling
    divides by `ratio` (rounded, so that 94 comes down to 2 in twelve layers of cbrt(2))."""
    sizes, size = [], input_size
    for _ in range(layers):
        size = round((size - 1) / ratio)
        sizes.append(size)
    return sizes


class GrahamFMPNet(nn.Module):
    def __init__(self, filters: int = 160, layers: int = 12, num_classes: int = 10, *, ratio: float = 2 ** (1 / 3),
                 input_size: int = 94, dropout_last: float = 0.5, checkpoint=False,
                 backend: Optional[str] = None) -> None:
        super().__init__()
        sizes = fmp_sizes(input_size, layers, ratio)
        if sizes[-1] != 2 or any(not 1 < (a - 1) / b < 2 for a, b in zip([input_size] + sizes, sizes)):
            raise ValueError(f"GrahamFMPNet: input_size {input_size} with {layers} layers of ratio {ratio:.3f} gives "
                             f"sizes {sizes}; the last must be 2 and each pooling must shrink by less than 2")
        self.input_size = input_size
        hidden = layers + 2
        drops = [dropout_last * i / (hidden - 1) for i in range(hidden)]
        stack, in_channels = [], 3
        for n in range(1, layers + 1):
            stack.append(FMPLayer(in_channels, filters * n, 2, drops[n - 1], sizes[n - 1], checkpoint=checkpoint,
                                  backend=backend))
            in_channels = filters * n
        stack.append(FMPLayer(in_channels, filters * (layers + 1), 2, drops[-2], None, checkpoint=checkpoint))
        stack.append(FMPLayer(filters * (layers + 1), filters * (layers + 2), 1, drops[-1], None, checkpoint=checkpoint))
        self.layers = nn.Sequential(*stack)
        self.fc = nn.Linear(filters * (layers + 2), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h > self.input_size or w > self.input_size:
            raise ValueError(f"GrahamFMPNet: images must be at most {self.input_size}x{self.input_size}, got {h}x{w}")
        top, left = (self.input_size - h) // 2, (self.input_size - w) // 2
        x = F.pad(x, (left, self.input_size - w - left, top, self.input_size - h - top))
        return self.fc(self.layers(x).flatten(1))
