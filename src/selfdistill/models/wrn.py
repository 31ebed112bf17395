"""Wide ResNets WRN-d-w for 32-px inputs (Zagoruyko & Komodakis; RepDistiller ``wrn.py``)."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from .registry import MODELS


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv ×2 with optional dropout."""

    def __init__(self, inp: int, out: int, stride: int, drop: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inp)
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()
        self.shortcut = None if inp == out else nn.Conv2d(inp, out, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = self.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(self.drop(self.relu(self.bn2(y))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-depth-widen: 3 stages of (depth−4)/6 blocks with widths 16·w, 32·w, 64·w."""

    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_chans: int = 3, drop: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n+4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        stages = []
        for i, stride in enumerate((1, 2, 2)):
            blocks = [WideBlock(widths[i] if j == 0 else widths[i + 1], widths[i + 1], stride if j == 0 else 1, drop)
                      for j in range(n)]
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


for _d, _w in ((16, 1), (16, 2), (40, 1), (40, 2), (28, 10)):
    MODELS.register(f"wrn_{_d}_{_w}")(partial(WideResNet, _d, _w))
