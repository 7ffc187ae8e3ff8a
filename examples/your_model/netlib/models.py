"""A small CNN for 28×28 grayscale images, written as third-party model code usually is: its own normalisation,
Dropout, and a ``view`` flatten after the convolutions."""

import torch
from torch import nn

NORMALIZE = {"mean": 0.2860, "std": 0.3530}  # the Fashion-MNIST statistics this network was trained with


class SmallConvNet(nn.Module):
    def __init__(self, num_classes: int = 10, dropout: float = 0.25) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = x.view(x.size(0), -1)  # the flatten most PyTorch code writes
        x = self.dropout(torch.relu(self.fc1(x)))
        return self.fc2(x)


def build() -> nn.Module:
    """The network, as its authors hand it over: in train() mode, as every freshly made nn.Module is."""
    return SmallConvNet()
