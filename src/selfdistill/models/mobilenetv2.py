"""MobileNetV2 for 32-px inputs as used in the CIFAR KD benchmarks (RepDistiller ``mobilenetv2.py``,
``mobile_half``: width multiplier 0.5, expansion 6, stride-1 stem)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import MODELS


def _conv_bn(inp: int, out: int, k: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(inp, out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(out)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise 3×3 → project (1×1), residual when shapes match."""

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == out
        self.conv = nn.Sequential(_conv_bn(inp, hidden, 1, 1), _conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                  _conv_bn(hidden, out, 1, 1, act=False))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (CIFAR variant)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width_mult: float = 0.5, expand: int = 6) -> None:
        super().__init__()
        setting = [(1, 16, 1, 1), (expand, 24, 2, 1), (expand, 32, 3, 2), (expand, 64, 4, 2), (expand, 96, 3, 1),
                   (expand, 160, 3, 2), (expand, 320, 1, 1)]
        c = int(32 * width_mult)
        layers: list[nn.Module] = [_conv_bn(in_chans, c, 3, 1)]
        for t, ch, n, s in setting:
            out = int(ch * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        layers.append(_conv_bn(c, self.last_channel, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(self.last_channel, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


MODELS.register("mobilenetv2")(MobileNetV2)
