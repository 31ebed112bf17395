"""ImageNet-width ResNets with a CIFAR stem (3×3 conv, no max-pool): ``resnet{18,34,50}_cifar`` and the
PreAct ResNet-18 used by CS-KD, PS-KD and Zipf's LS: distinct networks, although papers call each "ResNet-18 on
CIFAR"."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from .registry import MODELS
from .resnet_3stage import BasicBlock, Bottleneck


class ResNetCifar(nn.Module):
    """4 stages, widths 64–512, stride 1 stem; ``block`` is basic or bottleneck."""

    def __init__(self, block: type[nn.Module], layers: tuple[int, ...], num_classes: int = 10,
                 in_chans: int = 3) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(block(self.inplanes, planes, 2 if (i > 0 and j == 0) else 1))
                self.inplanes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class PreActBlock(nn.Module):
    """Pre-activation basic block (BN-ReLU-conv ×2)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or inplanes != planes:
            self.shortcut = nn.Conv2d(inplanes, planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(torch.relu(self.bn2(self.conv1(out))))
        return out + short


class PreActResNetCifar(ResNetCifar):
    """PreAct ResNet (He et al. 2016b) with a final BN-ReLU before pooling."""

    def __init__(self, layers: tuple[int, ...], num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__(PreActBlock, layers, num_classes, in_chans)
        del self.bn1
        self.bn = nn.BatchNorm2d(512)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        x = torch.relu(self.bn(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


MODELS.register("resnet18_cifar")(partial(ResNetCifar, BasicBlock, (2, 2, 2, 2)))
MODELS.register("resnet34_cifar")(partial(ResNetCifar, BasicBlock, (3, 4, 6, 3)))
MODELS.register("resnet50_cifar")(partial(ResNetCifar, Bottleneck, (3, 4, 6, 3)))
MODELS.register("preact_resnet18_cifar")(partial(PreActResNetCifar, (2, 2, 2, 2)))
