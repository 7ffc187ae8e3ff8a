"""Bundled demo architectures and the default teacher's training.

``ZOO`` maps a name to ``"module:function"``; torch is imported only when a
model is built, so recipes validate without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

ZOO: dict[str, str] = {
    "resnet_small": "edgeship.zoo.resnet:resnet_small",
    "resnet_small_s2": "edgeship.zoo.resnet:resnet_small_s2",
    "mobilenet_small": "edgeship.zoo.mobilenet:mobilenet_small",
}


def build(name: str, *, in_channels: int, num_classes: int, width: int) -> nn.Module:
    """A fresh, untrained zoo model."""
    module_name, function = ZOO[name].split(":")
    factory = getattr(importlib.import_module(module_name), function)
    return factory(in_channels=in_channels, num_classes=num_classes, width=width)
