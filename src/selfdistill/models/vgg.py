"""VGG with BatchNorm for 32-px inputs (RepDistiller ``vgg.py``: five conv blocks, max-pool between them)."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from .registry import MODELS

CFGS = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


class VGG(nn.Module):
    """VGG-BN; the last block is followed by global average pooling and one linear classifier."""

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        blocks, c = [], in_chans
        for widths in CFGS[depth]:
            layers: list[nn.Module] = []
            for w in widths:
                layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            blocks.append(nn.Sequential(*layers))
        self.block0, self.block1, self.block2, self.block3, self.block4 = blocks
        self.pool = nn.MaxPool2d(2, 2)
        self.classifier = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        for block in (self.block0, self.block1, self.block2, self.block3):
            x = block(x)
            if x.shape[-1] > 1:  # small inputs (e.g. 8-px digits) stop shrinking at 1 px
                x = self.pool(x)
        x = self.block4(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


for _d in CFGS:
    MODELS.register(f"vgg{_d}")(partial(VGG, _d))
