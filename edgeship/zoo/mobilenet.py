"""A small MobileNetV2-style net: inverted residuals with depthwise 3×3 convolutions."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1×1 expand → depthwise 3×3 → 1×1 project, with a residual add when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(_conv_bn(cin, hidden, 1, 1), _conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                   _conv_bn(hidden, cout, 1, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetSmall(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = _conv_bn(in_channels, w, 3, 1)
        self.blocks = nn.Sequential(InvertedResidual(w, w, 1, 2), InvertedResidual(w, 2 * w, 2, 4),
                                    InvertedResidual(2 * w, 2 * w, 1, 4), InvertedResidual(2 * w, 4 * w, 2, 4),
                                    InvertedResidual(4 * w, 4 * w, 1, 4))
        self.head = _conv_bn(4 * w, 8 * w, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def mobilenet_small(*, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> MobileNetSmall:
    return MobileNetSmall(in_channels, num_classes, width)
