"""Swapping cifarops into a model from another code base, by its import and with cifarops.swap_layers.

A fast-autoaugment-style PyramidNet (FastAutoAugment/networks/pyramidnet.py) imports the ShakeDrop of its own
shakedrop.py, a 30-line autograd Function: one gate per batch (kept with probability 1 - p_drop), alpha per
sample in [-1, 1], beta per sample in [0, 1], and (1 - p_drop) * x in evaluation. cifarops.ShakeDrop has the
same signature and, with its defaults (gate_level="batch", level="sample"), the same conventions, so the swap
is the one changed import below; the fused layer also adds the shortcut in the same pass when given it.

swap_layers does the rest of the work for layers it can recognise safely: torch.nn.FractionalMaxPool2d and
cifarops layers pinned to the reference backend. It leaves other code bases' own layers alone (their
conventions are their own) and lists them in its report.

    python examples/swap_existing_model.py
"""

import torch
import torch.nn.functional as F
from torch import nn

import cifarops
# from shakedrop import ShakeDrop      # the code base's own layer: the one line that changes
from cifarops import ShakeDrop


class Bottleneck(nn.Module):
    """fast-autoaugment's PyramidNet bottleneck, condensed: BN-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN,
    ShakeDrop, then the zero-padded shortcut added."""

    outchannel_ratio = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, p_shakedrop=1.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample
        self.shake_drop = ShakeDrop(p_shakedrop)

    def forward(self, x):
        out = F.relu(self.bn2(self.conv1(self.bn1(x))))
        out = F.relu(self.bn3(self.conv2(out)))
        out = self.shake_drop(self.bn4(self.conv3(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        padding = torch.zeros(out.shape[0], out.shape[1] - shortcut.shape[1], *out.shape[2:], dtype=out.dtype,
                              device=out.device)
        return out + torch.cat((shortcut, padding), 1)


class PyramidNet(nn.Module):
    """fast-autoaugment's CIFAR PyramidNet (condensed); p_shakedrop follows its linear rule."""

    def __init__(self, depth=20, alpha=24, num_classes=10):
        super().__init__()
        n = (depth - 2) // 9
        self.addrate, self.inplanes, self.featuremap_dim = alpha / (3 * n), 16, 16.0
        self.ps_shakedrop = [0.5 * (i + 1) / (3 * n) for i in range(3 * n)]
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layers = nn.Sequential(*[self._layer(n, 1 if i == 0 else 2) for i in range(3)])
        self.bn_final = nn.BatchNorm2d(self.inplanes)
        self.fc = nn.Linear(self.inplanes, num_classes)

    def _layer(self, blocks, stride):
        layers = []
        for i in range(blocks):
            downsample = nn.AvgPool2d(2, 2, ceil_mode=True) if stride != 1 and i == 0 else None
            self.featuremap_dim += self.addrate
            planes = int(round(self.featuremap_dim))
            layers.append(Bottleneck(self.inplanes, planes, stride if i == 0 else 1, downsample,
                                     p_shakedrop=self.ps_shakedrop.pop(0)))
            self.inplanes = planes * Bottleneck.outchannel_ratio
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.layers(self.bn1(self.conv1(x)))
        return self.fc(F.relu(self.bn_final(x)).mean((2, 3)))


class FractionalNet(nn.Module):
    """Another code base's network with torch's fractional max-pooling."""

    def __init__(self):
        super().__init__()
        # Fixed draws (torch's _random_samples, (N, C, 2)), as a code base that wants reproducible pooling has.
        self.features = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
                                      nn.FractionalMaxPool2d(2, output_ratio=2 ** -0.5,
                                                             _random_samples=torch.rand(8, 32, 2)),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                                      nn.FractionalMaxPool2d(2, output_ratio=2 ** -0.5,
                                                             _random_samples=torch.rand(8, 64, 2)))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def main():
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    # 1. The PyramidNet trains with the fused ShakeDrop: nothing else in the code base changed.
    model = PyramidNet()
    F.cross_entropy(model(x), y).backward()
    print("PyramidNet with cifarops.ShakeDrop:", sum(isinstance(m, ShakeDrop) for m in model.modules()), "layers")

    # 2. torch's FMP replaced in place; for the same draws the outputs are torch's, bit for bit. (Without fixed
    #    draws both draw per call: the same distribution, from cifarops' Philox stream instead of torch.rand.)
    net = FractionalNet()
    torch.manual_seed(0)
    before = net(x)
    net, report = cifarops.swap_layers(net)
    print(report)
    torch.manual_seed(0)
    print("same outputs after the swap:", torch.equal(net(x), before))

    # 3. A model built on the reference layers (the pure-PyTorch oracle) moved to the fused kernels.
    reference = cifarops.models.create("pyramidnet272-a200-shakedrop", reference=True, depth=11, alpha=12)
    reference, report = cifarops.swap_layers(reference)
    print(report)


if __name__ == "__main__":
    main()
