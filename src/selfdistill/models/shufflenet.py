"""ShuffleNetV1 (groups 3) and ShuffleNetV2 (1×) for 32-px inputs, as in RepDistiller."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import MODELS


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave channels across ``groups``."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class V1Block(nn.Module):
    """ShuffleNetV1 unit: grouped 1×1, shuffle, depthwise 3×3, grouped 1×1; concat-pooled when strided."""

    def __init__(self, inp: int, out: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = out // 4
        g = 1 if inp == 24 else groups
        self.groups = g
        cat_out = out - inp if stride == 2 else out
        self.conv1 = nn.Conv2d(inp, mid, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cat_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cat_out)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else None

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.groups)
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            return torch.relu(torch.cat([out, self.shortcut(x)], 1))
        return torch.relu(out + x)


class ShuffleNetV1(nn.Module):
    """ShuffleNetV1, groups 3, stage widths 240/480/960, blocks 4/8/4."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, groups: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        layers, c = [], 24
        for out, n in zip((240, 480, 960), (4, 8, 4), strict=True):
            for i in range(n):
                layers.append(V1Block(c, out, 2 if i == 0 else 1, groups))
                c = out
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class V2Block(nn.Module):
    """ShuffleNetV2 unit: channel split (stride 1) or two strided branches (stride 2), then shuffle."""

    def __init__(self, inp: int, out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = out // 2
        right_in = inp if stride == 2 else inp // 2
        self.right = nn.Sequential(
            nn.Conv2d(right_in, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
            nn.Conv2d(branch, branch, 3, stride, 1, groups=branch, bias=False), nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True))
        self.left = None
        if stride == 2:
            self.left = nn.Sequential(
                nn.Conv2d(inp, inp, 3, 2, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        if self.left is None:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.right(b)], 1)
        else:
            out = torch.cat([self.left(x), self.right(x)], 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 1×: widths 116/232/464, blocks 4/8/4 (3+1 per stage), 1024-channel head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 24, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        layers, c = [], 24
        for out, n in zip((116, 232, 464), (4, 8, 4), strict=True):
            for i in range(n):
                layers.append(V2Block(c, out, 2 if i == 0 else 1))
                c = out
        self.layers = nn.Sequential(*layers)
        self.conv2 = nn.Conv2d(c, 1024, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1024)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


MODELS.register("shufflenetv1")(ShuffleNetV1)
MODELS.register("shufflenetv2")(ShuffleNetV2)
