"""Models that recipes in the tests name with ``model.factory: 'factories:<name>'`` (tests/ is on sys.path)."""

from __future__ import annotations

import torch

from edgeship.zoo import build


def tiny_cnn() -> torch.nn.Module:
    """The bundled small ResNet at width 4, for 1×28×28 inputs and 10 classes."""
    return build("resnet_small", in_channels=1, num_classes=10, width=4)


class Determinant(torch.nn.Module):
    """A classifier whose graph holds ONNX ``Det``: ONNX Runtime runs it, OpenVINO and onnx2tf cannot convert it."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.head = torch.nn.Linear(17, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x)
        det = torch.linalg.det(pooled[:, 0]).unsqueeze(1)
        return self.head(torch.cat([pooled.flatten(1), det], dim=1))


def determinant() -> torch.nn.Module:
    return Determinant()


class Picky(torch.nn.Module):
    """Runs on the stage's two-sample shape check, then raises on a real batch, as user code can."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(0) > 2:
            raise RuntimeError("this network was exported for batches of at most 2")
        return self.fc(x.flatten(1))


def picky() -> torch.nn.Module:
    return Picky()


def explode() -> torch.nn.Module:
    raise ValueError("config file netlib.yaml not found")
