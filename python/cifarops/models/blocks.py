"""The residual blocks of the model zoo, each with a ``checkpoint`` option ("none", "full", "selective",
"cheap"; True means "full"): PyramidNet's basic and bottleneck blocks with ShakeDrop, the ResNet basic block with
stochastic depth, the Shake-Shake block with its two-path shortcut, and the Wide-ResNet block. ``backend`` pins the cifarops layers' implementation
("reference" for the pure-PyTorch network)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from cifarops.checkpoint import checkpoint, checkpoint_mode
from cifarops.modules import DropActivation, ShakeDrop, ShakeShake, StochasticDepth


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def init_convolutions(model: nn.Module) -> None:
    """He initialisation (fan-out) of every convolution, as the zoo's ResNet-family codebases do."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def check_block_input(x, channels: int, like: torch.Tensor, owner: str) -> None:
    """Checks a block's input against its first layer with parameters (`like`) before anything runs: torch's
    BatchNorm counts the batch (num_batches_tracked) and dropout draws from the generator before the layer that
    rejects a wrong channel count, dtype or device raises, which would leave a failed call's traces behind."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{owner}: x must have shape (N, {channels}, H, W), got {tuple(x.shape)}")
    if x.device != like.device:
        raise ValueError(f"{owner}: x is on {x.device} but the block's parameters are on {like.device}")
    if x.dtype != like.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{owner}: x must have the parameters' dtype {like.dtype} outside autocast, got {x.dtype}")


class CheckpointedBlock(nn.Module):
    """A block whose ``block_forward`` runs under :func:`cifarops.checkpoint.checkpoint` with the block's mode.
    Subclasses with random layers other than cifarops's (dropout) set ``uses_torch_noise`` so that torch's
    generators are restored for the recomputation; cifarops's own draws are replayed from the tape."""

    uses_torch_noise = False

    def __init__(self, checkpoint=False) -> None:
        super().__init__()
        self.checkpoint = checkpoint_mode(checkpoint)

    def block_forward(self, *args):
        raise NotImplementedError

    def check_input(self, *args) -> None:
        """Blocks whose first layer changes state before it can fail (BatchNorm, dropout) check here."""

    def forward(self, *args):
        self.check_input(*args)
        return checkpoint(
            self.block_forward, *args, modules=(self,), mode=self.checkpoint, preserve_rng_state=self.uses_torch_noise
        )

    def extra_repr(self) -> str:
        return f"checkpoint={self.checkpoint!r}"


class _PyramidBlock(CheckpointedBlock):
    """What PyramidNet's two blocks share: the first BatchNorm, the average-pooled shortcut of a strided block
    and ShakeDrop fused with the shortcut, zero-padded to the wider branch (without materialising the zeros).
    Subclasses add the convolutions and `residual`."""

    def __init__(self, in_channels: int, stride: int, p_drop: float, checkpoint, backend, shake_drop) -> None:
        super().__init__(checkpoint)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.pool = nn.AvgPool2d(2, stride=2, ceil_mode=True) if stride != 1 else None
        self.shake_drop = ShakeDrop(p_drop, backend=backend, **shake_drop)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check_input(self, x) -> None:
        check_block_input(x, self.bn1.num_features, self.conv1.weight, type(self).__name__)

    def block_forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.pool is None else self.pool(x)
        return self.shake_drop(self.residual(x), shortcut)


class PyramidBasicBlock(_PyramidBlock):
    """PyramidNet's basic block (Han et al., arXiv 1610.02915): BN-conv3x3-BN-ReLU-conv3x3-BN, then ShakeDrop
    fused with the shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, p_drop: float, *, checkpoint=False,
                 backend: Optional[str] = None, **shake_drop) -> None:
        super().__init__(in_channels, stride, p_drop, checkpoint, backend, shake_drop)
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn3 = nn.BatchNorm2d(planes)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.bn1(x))
        return self.bn3(self.conv2(F.relu(self.bn2(h))))


class PyramidBottleneckBlock(_PyramidBlock):
    """PyramidNet's bottleneck block: BN-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN (4x wider), then ShakeDrop
    fused with the (pooled, zero-padded) shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, p_drop: float, *, checkpoint=False,
                 backend: Optional[str] = None, **shake_drop) -> None:
        super().__init__(in_channels, stride, p_drop, checkpoint, backend, shake_drop)
        self.conv1 = conv1x1(in_channels, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn4 = nn.BatchNorm2d(planes * 4)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn2(self.conv1(self.bn1(x))))
        h = F.relu(self.bn3(self.conv2(h)))
        return self.bn4(self.conv3(h))


class StochasticDepthBlock(CheckpointedBlock):
    """The ResNet basic block of Huang et al. (arXiv 1603.09382; He et al.'s CIFAR ResNet): conv3x3-BN-ReLU-
    conv3x3-BN, dropped with probability p_drop by stochastic depth in Huang's unscaled form (evaluation scales
    by 1 - p_drop) fused with the shortcut, then ReLU. A strided block's shortcut is the input subsampled by 2
    and zero-padded to the wider branch, as Huang's code does (no padding is materialised)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, p_drop: float, *, checkpoint=False,
                 backend: Optional[str] = None) -> None:
        super().__init__(checkpoint)
        self.stride = stride
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stochastic_depth = StochasticDepth(p_drop, "row", scale_by_keep=False, backend=backend)

    def check_input(self, x) -> None:
        check_block_input(x, self.conv1.in_channels, self.conv1.weight, type(self).__name__)

    def block_forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.stride == 1 else x[:, :, ::self.stride, ::self.stride]
        return F.relu(self.stochastic_depth(h, shortcut))


class ShakeShakeShortcut(nn.Module):
    """Shake-Shake's shortcut where the width changes (Gastaldi's code): ReLU, then two 1x1 convolutions of
    half the output width, one on the pixels of even and one on those of odd coordinates (the input shifted
    by one), concatenated and batch-normalised."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"ShakeShakeShortcut: out_channels must be even, got {out_channels}")
        self.stride = stride
        self.conv1 = conv1x1(in_channels, out_channels // 2)
        self.conv2 = conv1x1(in_channels, out_channels // 2)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        s = self.stride
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv1(x[:, :, ::s, ::s]), self.conv2(shifted[:, :, ::s, ::s])], 1))


class ShakeShakeBlock(CheckpointedBlock):
    """The Shake-Shake block (Gastaldi, arXiv 1705.07485): two ReLU-conv3x3-BN-ReLU-conv3x3-BN branches mixed
    by :class:`cifarops.ShakeShake`, fused with the shortcut (identity, or the two-path shortcut)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, checkpoint=False,
                 backend: Optional[str] = None, **shake_shake) -> None:
        super().__init__(checkpoint)
        self.branch1 = self._branch(in_channels, out_channels, stride)
        self.branch2 = self._branch(in_channels, out_channels, stride)
        self.shortcut = ShakeShakeShortcut(in_channels, out_channels, stride) if in_channels != out_channels else None
        self.shake_shake = ShakeShake(backend=backend, **shake_shake)

    @staticmethod
    def _branch(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.ReLU(), conv3x3(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True), conv3x3(out_channels, out_channels), nn.BatchNorm2d(out_channels),
        )

    def check_input(self, x) -> None:
        # torch's convolution lets a meta input through to the BatchNorm behind it, which counts the batch.
        conv = self.branch1[1]
        check_block_input(x, conv.in_channels, conv.weight, type(self).__name__)

    def block_forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.shake_shake(self.branch1(x), self.branch2(x), shortcut)


class WideBasicBlock(CheckpointedBlock):
    """The Wide-ResNet block (Zagoruyko & Komodakis, arXiv 1605.07146): BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3
    plus the identity, or a strided 1x1 convolution of the activated input where the width changes. With
    ``drop_activation`` (a keep probability) both ReLUs are Drop-Activation layers (Liang, Khoo & Yang)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float = 0.0, *,
                 checkpoint=False, drop_activation: Optional[float] = None, backend: Optional[str] = None) -> None:
        super().__init__(checkpoint)
        # Two layers (a module each, as models written with nn.ReLU have), or torch's relu.
        self.act1 = self.act2 = None
        if drop_activation is not None:
            self.act1 = DropActivation(drop_activation, backend=backend)
            self.act2 = DropActivation(drop_activation, backend=backend)
        self.uses_torch_noise = dropout > 0
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(out_channels, out_channels)
        same = in_channels == out_channels and stride == 1
        self.shortcut = None if same else conv1x1(in_channels, out_channels, stride)

    def check_input(self, x) -> None:
        check_block_input(x, self.bn1.num_features, self.conv1.weight, type(self).__name__)

    def block_forward(self, x: torch.Tensor) -> torch.Tensor:
        act1, act2 = (F.relu, F.relu) if self.act1 is None else (self.act1, self.act2)
        o = act1(self.bn1(x))
        h = self.conv2(self.dropout(act2(self.bn2(self.conv1(o)))))
        return h + (x if self.shortcut is None else self.shortcut(o))
