"""CIFAR ResNets of the KD literature (RepDistiller/mdistiller ``resnet.py``): 3 stages, 3×3 stem."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from .registry import MODELS


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a projection shortcut when the shape changes."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 bottleneck (expansion 4)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != width:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) (basic) or -(9n+2) (bottleneck) with stage widths ``filters[1:]``."""

    def __init__(self, depth: int, filters: tuple[int, int, int, int], bottleneck: bool = False,
                 num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        block = Bottleneck if bottleneck else BasicBlock
        per = 9 if bottleneck else 6
        if (depth - 2) % per:
            raise ValueError(f"depth {depth} must be {per}n+2")
        n = (depth - 2) // per
        self.inplanes = filters[0]
        self.conv1 = nn.Conv2d(in_chans, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, filters[1], n)
        self.layer2 = self._make_layer(block, filters[2], n, stride=2)
        self.layer3 = self._make_layer(block, filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(filters[3] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [block(self.inplanes, planes, stride)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


for _d in (8, 14, 20, 32, 44, 56, 110):
    MODELS.register(f"resnet{_d}")(partial(CifarResNet, _d, (16, 16, 32, 64)))
MODELS.register("resnet8x4")(partial(CifarResNet, 8, (32, 64, 128, 256)))
MODELS.register("resnet32x4")(partial(CifarResNet, 32, (32, 64, 128, 256)))
